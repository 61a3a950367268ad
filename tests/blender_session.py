"""Runs inside a fresh Python process with the ``bpy`` module (see test_blender.py).

    python tests/blender_session.py ZIP WORKDIR

Installs the extension zip through Blender's extension machinery, imports scene files,
checks what was created against the ground truth, renders, uninstalls, and prints one JSON
object with the measurements on the last line of stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(zip_path: str, work: str) -> dict:
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    work = Path(work)
    out: dict = {}
    bpy.ops.wm.read_factory_settings(use_empty=True)
    res = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    out["install"] = sorted(res)
    out["operator_registered"] = hasattr(bpy.types, "IMPORT_SCENE_OT_da3_npz") and hasattr(bpy.types, "DA3_PT_display")
    out["menu_entry"] = any(getattr(f, "__name__", "") == "_menu_import"
                            for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())

    # --- import the synthetic ground truth
    truth = np.load(work / "truth.npz")

    t = time.perf_counter()
    res = bpy.ops.import_scene.da3_npz(filepath=str(work / "scene.npz"), threshold_mode="NONE")
    out["import_seconds"] = time.perf_counter() - t
    out["import_result"] = sorted(res)
    coll = bpy.data.collections["scene"]
    cams = sorted((o for o in coll.objects if o.type == "CAMERA"), key=lambda o: o["da3_view"])
    points = next(o for o in coll.objects if o.type == "MESH")
    out["n_cameras"] = len(cams)
    out["n_points"] = len(points.data.vertices)
    out["attributes"] = sorted(a.name for a in points.data.attributes)
    conf = np.zeros(len(points.data.vertices), np.float32)
    points.data.attributes["confidence"].data.foreach_get("value", conf)
    out["confidence_sum"] = float(conf.sum())
    out["units"] = coll["da3_units"]

    # --- cameras through Blender's own projection vs. the true K and pose
    scene = bpy.context.scene
    err = 0.0
    world_pts = truth["world_points"]  # (M, 3) DA3 world
    blender_pts = truth["blender_points"]  # the same points in Blender's world
    for i, cam in enumerate(cams):
        scene.render.resolution_x = cam["da3_resolution_x"]
        scene.render.resolution_y = cam["da3_resolution_y"]
        scene.render.pixel_aspect_x = cam["da3_pixel_aspect_x"]
        scene.render.pixel_aspect_y = cam["da3_pixel_aspect_y"]
        w, h = scene.render.resolution_x, scene.render.resolution_y
        ext, k = truth["extrinsics"][i], truth["intrinsics"][i]
        cam_pts = world_pts @ ext[:, :3].T + ext[:, 3]
        front = cam_pts[:, 2] > 0.1
        uv = cam_pts[front] @ k.T
        uv = uv[:, :2] / uv[:, 2:]
        for p, expected in zip(blender_pts[front][:200], uv[:200]):
            ndc = world_to_camera_view(scene, cam, Vector(p.tolist()))
            got = np.array([ndc.x * w, (1 - ndc.y) * h])
            err = max(err, float(np.abs(got - expected).max()))
    out["max_projection_error_px"] = err

    # --- the Geometry Nodes threshold hides the right points
    dg = bpy.context.evaluated_depsgraph_get()

    def shown():
        dg.update()
        geo = points.evaluated_get(dg).evaluated_geometry()
        return 0 if geo.pointcloud is None else len(geo.pointcloud.points)

    from importlib import import_module

    importer = import_module("bl_ext.user_default.da3_plugins.importer")
    out["shown_all"] = shown()
    importer.set_threshold(points, 2.5)
    out["shown_at_2.5"] = shown()
    out["expected_at_2.5"] = int((conf >= 2.5).sum())
    importer.set_threshold(points, 0.0)

    # --- bad input: error report, nothing changes
    n_objects, n_images = len(bpy.data.objects), len(bpy.data.images)
    bad = {}
    for name in ("foreign.npz", "newer.npz", "missing.npz"):
        try:
            r = bpy.ops.import_scene.da3_npz(filepath=str(work / name))
            bad[name] = sorted(r)
        except RuntimeError as exc:  # operator errors surface as RuntimeError in background mode
            bad[name] = ["ERROR", str(exc).strip().splitlines()[-1]]
    out["bad"] = bad
    out["unchanged_after_bad"] = (len(bpy.data.objects), len(bpy.data.images)) == (n_objects, n_images)

    # --- render from camera 1 (Cycles CPU; the points' material is unlit) and compare with the photo
    scene.camera = cams[1]
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 8
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = cams[1]["da3_resolution_x"], cams[1]["da3_resolution_y"]
    scene.render.pixel_aspect_x = cams[1]["da3_pixel_aspect_x"]
    scene.render.pixel_aspect_y = cams[1]["da3_pixel_aspect_y"]
    scene.view_settings.view_transform = "Standard"
    scene.render.film_transparent = False
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(work / "render.png")
    # the render shows the point cloud only
    for cam in cams:
        cam.data.show_background_images = False
    bpy.ops.render.render(write_still=True)
    out["render"] = str(work / "render.png")

    # --- depth meshes: faces only where the depth is continuous, UVs onto the photo
    bpy.ops.import_scene.da3_npz(filepath=str(work / "scene.npz"), threshold_mode="NONE", points=False,
                                 cameras=False, depth_meshes=True)
    dm = sorted((o for o in bpy.data.collections["scene.001"].objects if o.type == "MESH"), key=lambda o: o["da3_view"])
    out["depth_meshes"] = len(dm)
    m = dm[0].data
    out["depth_mesh_faces"] = len(m.polygons)
    co = np.zeros(len(m.vertices) * 3, np.float32)
    m.vertices.foreach_get("co", co)
    used = np.unique([v for p in m.polygons for v in p.vertices])
    out["depth_mesh_vertices_used"] = int(len(used))
    np.save(work / "depth_mesh_vertices.npy", co.reshape(-1, 3)[used])

    # --- Gaussians: attributes and the instanced preview
    bpy.ops.import_scene.da3_npz(filepath=str(work / "splats.npz"), threshold_mode="NONE", cameras=False)
    splats = next(o for o in bpy.data.collections["splats"].objects if o.modifiers.get("DA3 Splats"))
    out["splat_count"] = len(splats.data.vertices)
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    geo = splats.evaluated_get(dg).evaluated_geometry()
    out["splat_instances"] = 0 if geo.instances_pointcloud() is None else len(geo.instances_pointcloud().points)
    from mathutils import Quaternion

    rot = np.zeros(12, np.float32)
    splats.data.attributes["rotation"].data.foreach_get("value", rot)
    out["splat_long_axis"] = list(Quaternion(rot[:4].tolist()).to_matrix() @ Vector((1, 0, 0)))

    # --- a million points
    t = time.perf_counter()
    bpy.ops.import_scene.da3_npz(filepath=str(work / "big.npz"), threshold_mode="NONE", background=False)
    out["million_seconds"] = time.perf_counter() - t
    big = next(o for o in bpy.data.collections["big"].objects if o.type == "MESH")
    out["million_points"] = len(big.data.vertices)

    # --- reconstruct through the worker (blocking path), then failing workers
    prefs = bpy.context.preferences.addons["bl_ext.user_default.da3_plugins"].preferences
    prefs.executable = str(work / "da3p")
    prefs.device = "cpu"
    n_before = len(bpy.data.objects)
    res = bpy.ops.da3.reconstruct(directory=str(work / "photos"), model=str(work / "model"), process_res=56)
    out["worker_result"] = sorted(res)
    made = bpy.data.collections.get("photos")
    out["worker_cameras"] = 0 if made is None else sum(o.type == "CAMERA" for o in made.objects)
    out["worker_objects_added"] = len(bpy.data.objects) - n_before
    t = time.perf_counter()
    bpy.ops.da3.reconstruct(directory=str(work / "photos"), model=str(work / "model"), process_res=56)
    out["worker_second_seconds"] = time.perf_counter() - t
    res = bpy.ops.da3.stop_worker()
    failures = {}
    for name in ("missing", "crash", "garbage"):
        prefs.executable = str(work / f"fake_{name}")
        n_objects = len(bpy.data.objects)
        try:
            r = bpy.ops.da3.reconstruct(directory=str(work / "photos"), model=str(work / "model"), process_res=56)
            failures[name] = [sorted(r), len(bpy.data.objects) - n_objects]
        except RuntimeError as exc:
            failures[name] = ["ERROR", str(exc).strip().splitlines()[-1], len(bpy.data.objects) - n_objects]
        bpy.ops.da3.stop_worker()
    out["worker_failures"] = failures

    out.update(reconstruct_offline(work))

    # --- uninstall: classes, menu entries and file handler gone
    repos = [r.module for r in bpy.context.preferences.extensions.repos]
    bpy.ops.extensions.package_uninstall(repo_index=repos.index("user_default"), pkg_id="da3_plugins")
    out["after_uninstall_operator"] = hasattr(bpy.types, "IMPORT_SCENE_OT_da3_npz")
    out["after_uninstall_panel"] = hasattr(bpy.types, "DA3_PT_display")
    out["after_uninstall_menu"] = any(getattr(f, "__name__", "") == "_menu_import"
                                      for f in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize())
    out["after_uninstall_file_handler"] = hasattr(bpy.types, "DA3_FH_import_scene")
    return out


def reconstruct_offline(work: Path) -> dict:
    """Reconstruct from Images with Blender's online access off.

    The embedded model and the same model given as a local folder run (the worker is this
    environment's ``da3p``); a hub id and the empty default are refused before any worker
    request.  Records the operator's enum items and defaults and every request sent.
    """
    import bpy
    from importlib import import_module

    embedded_folder = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "da3-tiny"
    prefs = bpy.context.preferences.addons["bl_ext.user_default.da3_plugins"].preferences
    prefs.executable = str(work / "da3p")
    prefs.device = "cpu"
    bpy.context.preferences.system.use_online_access = False
    out: dict = {"online_access": bpy.app.online_access}

    props = bpy.ops.da3.reconstruct.get_rna_type().properties
    out["enums"] = {name: [item.identifier for item in props[name].enum_items]
                    for name in ("ref_view", "process_res_method", "precision")}
    out["defaults"] = {name: props[name].default for name in ("process_res", "ref_view", "process_res_method",
                                                               "ray_pose", "gaussians", "precision")}

    client_module = import_module("bl_ext.user_default.da3_plugins.worker_client")
    original = client_module.WorkerClient.request
    sent = []

    def recording(self, cmd, **fields):
        sent.append(dict(fields, cmd=cmd))
        return original(self, cmd, **fields)

    client_module.WorkerClient.request = recording
    runs = {}
    try:
        for label, model in (("embedded", "embedded"), ("folder", str(embedded_folder)),
                             ("hub", "depth-anything/DA3-SMALL"), ("default", "")):
            n_objects, n_sent = len(bpy.data.objects), len(sent)
            collections = set(bpy.data.collections.keys())
            try:
                result = sorted(bpy.ops.da3.reconstruct(directory=str(work / "photos"), model=model, process_res=56))
            except RuntimeError as exc:  # operator errors surface as RuntimeError in background mode
                result = ["ERROR", str(exc).strip().splitlines()[-1]]
            made = [bpy.data.collections[c] for c in set(bpy.data.collections.keys()) - collections]
            runs[label] = {
                "result": result,
                "objects_added": len(bpy.data.objects) - n_objects,
                "cameras": sum(o.type == "CAMERA" for c in made for o in c.objects),
                "recorded_model": made[0].get("da3_model") if made else None,
                "requests": sent[n_sent:],
            }
    finally:
        client_module.WorkerClient.request = original
        bpy.ops.da3.stop_worker()
    out["offline_runs"] = runs
    out["embedded_folder"] = str(embedded_folder)
    return out


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2])
    print(json.dumps(result))
