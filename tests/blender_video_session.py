"""Runs inside a fresh Python process with the ``bpy`` module (see test_blender_video.py).

    python tests/blender_video_session.py ZIP WORKDIR

Installs the extension, imports scene files made from a synthetic video (and an image
sequence), checks the animated camera frame by frame through Blender's own
``world_to_camera_view`` against the true pixels, the scene settings, the footage binding, the
rescale operator, reconstructs a video through the worker, and prints one JSON object with the
measurements on the last line of stdout.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def projection_errors(scene, cam, frames, points_blender, pixels_true, w, h) -> float:
    """Max |Blender's projection - true pixel| over ``frames`` (scene frame numbers), px."""
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    err = 0.0
    for j, f in enumerate(frames):
        scene.frame_set(int(f))
        for p, expected in zip(points_blender, pixels_true[j]):
            ndc = world_to_camera_view(scene, cam, Vector(p.tolist()))
            got = np.array([ndc.x * w, (1 - ndc.y) * h])
            err = max(err, float(np.abs(got - expected).max()))
    return err


def clip_frames_shown(scene, clip, frames, references, work: Path) -> list:
    """For each scene frame, the index of the reference picture the clip shows there and the mean
    difference to it: the clip rendered by the compositor (a Movie Clip node), compared by pixels."""
    import bpy
    from PIL import Image

    tree = bpy.data.node_groups.new("clip check", "CompositorNodeTree")
    node = tree.nodes.new("CompositorNodeMovieClip")
    node.clip = clip
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    tree.links.new(node.outputs["Image"], tree.nodes.new("NodeGroupOutput").inputs[0])
    old = (scene.compositing_node_group, scene.view_settings.view_transform, scene.render.filepath)
    scene.compositing_node_group = tree
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    shown = []
    try:
        for f in frames:
            scene.frame_set(int(f))
            scene.render.filepath = str(work / f"clip_{int(f)}.png")
            bpy.ops.render.render(write_still=True)
            img = np.asarray(Image.open(scene.render.filepath).convert("RGB")).astype(np.float64)
            diffs = [float(np.abs(img - ref).mean()) for ref in references]
            shown.append([int(np.argmin(diffs)), min(diffs), sorted(diffs)[1]])
    finally:
        scene.compositing_node_group, scene.view_settings.view_transform, scene.render.filepath = old
        bpy.data.node_groups.remove(tree)
    return shown


class FakeLayout:
    """Records what a panel's ``draw`` shows (no UI in background mode); a property that does
    not exist fails like in Blender."""

    def __init__(self, shown):
        self.shown = shown

    def prop(self, data, name, **kwargs):
        if name not in data.bl_rna.properties:
            raise AttributeError(f"{type(data).__name__} has no property {name!r}")
        self.shown.append(name)

    def operator(self, idname, **kwargs):
        self.shown.append(idname)
        return type("OperatorProperties", (), {})()

    def label(self, **kwargs):
        pass

    def column(self, **kwargs):
        return self

    row = box = column


def main(zip_path: str, work: str) -> dict:
    import bpy

    work = Path(work)
    out: dict = {}
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = sorted(bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                                      enable_on_install=True))
    truth = np.load(work / "truth.npz")
    scene = bpy.context.scene

    # --- a video's scene file: one animated camera
    t = time.perf_counter()
    out["import_result"] = sorted(bpy.ops.import_scene.da3_npz(filepath=str(work / "shot.npz"),
                                                               threshold_mode="NONE"))
    out["import_seconds"] = time.perf_counter() - t
    coll = bpy.data.collections["shot"]
    cams = [o for o in coll.objects if o.type == "CAMERA"]
    out["n_cameras"] = len(cams)
    cam = cams[0]
    out["scene_camera_is_it"] = scene.camera == cam
    fcurves = {(fc.data_path, fc.array_index): len(fc.keyframe_points)
               for fc in _fcurves(cam.animation_data)}
    out["keys"] = {f"{k[0]}[{k[1]}]": v for k, v in fcurves.items()}
    out["lens_animated"] = cam.data.animation_data is not None
    out["frame_range"] = [scene.frame_start, scene.frame_end]
    out["fps"] = [scene.render.fps, scene.render.fps_base]
    out["resolution"] = [scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage]
    out["pixel_aspect"] = [scene.render.pixel_aspect_x, scene.render.pixel_aspect_y]
    bgs = list(cam.data.background_images)
    out["backgrounds"] = [{"source": b.source, "clip": bpy.path.abspath(b.clip.filepath) if b.clip else None,
                           "clip_frame_start": b.clip.frame_start if b.clip else None,
                           "clip_frame_offset": b.clip.frame_offset if b.clip else None,
                           "clip_frames": b.clip.frame_duration if b.clip else None,
                           "clip_size": list(b.clip.size) if b.clip else None} for b in bgs]
    out["show_background"] = cam.data.show_background_images
    import cv2

    cap = cv2.VideoCapture(str(work / "shot.mp4"))
    video = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        video.append(bgr[..., ::-1].astype(np.float64))
    cap.release()
    out["clip_shown"] = clip_frames_shown(scene, bgs[0].clip, [1, 6, 16], video, work)
    w, h = scene.render.resolution_x, scene.render.resolution_y
    frames = truth["frames"]
    out["projection_error_px"] = projection_errors(scene, cam, frames, truth["points_blender"], truth["pixels"], w, h)
    # between two keys (here every frame is a key, so a half frame): still a valid camera
    out["points"] = sum(o.type == "MESH" for o in coll.objects)

    # --- rescale: two selected points of the cloud are 2.0 apart
    points = next(o for o in coll.objects if o.type == "MESH")
    bpy.context.view_layer.objects.active = points
    for o in bpy.context.view_layer.objects:
        o.select_set(False)
    points.select_set(True)
    mesh = points.data
    co = np.zeros(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    a, b = 10, len(co) - 10
    sel = np.zeros(len(mesh.vertices), bool)
    sel[[a, b]] = True
    mesh.vertices.foreach_set("select", sel)
    before = float(np.linalg.norm(co[a] - co[b]))
    cam_locs_before = _camera_locations(scene, cam, frames)
    # a wrong selection (three vertices, no two objects) is refused and changes nothing
    sel3 = sel.copy()
    sel3[len(co) // 2] = True
    mesh.vertices.foreach_set("select", sel3)
    try:
        r = bpy.ops.da3.rescale(mode="DISTANCE", length=2.0)
        out["rescale_bad"] = [sorted(r)]
    except RuntimeError as exc:
        out["rescale_bad"] = ["ERROR", str(exc).strip().splitlines()[-1]]
    co_after_bad = np.zeros(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co_after_bad)
    out["rescale_bad_unchanged"] = bool(np.array_equal(co_after_bad.reshape(-1, 3), co))
    mesh.vertices.foreach_set("select", sel)
    out["rescale_result"] = sorted(bpy.ops.da3.rescale(mode="DISTANCE", length=2.0))
    co = np.zeros(len(mesh.vertices) * 3)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    out["distance_before"] = before
    out["distance_after"] = float(np.linalg.norm(co[a] - co[b]))
    factor = 2.0 / before
    out["factor"] = factor
    out["scale_property"] = coll.get("da3_scale_factor")
    out["units_after"] = coll.get("da3_units")
    cam_locs_after = _camera_locations(scene, cam, frames)
    out["camera_location_ratio_error"] = float(np.abs(cam_locs_after - factor * cam_locs_before).max())
    out["projection_error_after_rescale_px"] = projection_errors(
        scene, cam, frames, truth["points_blender"] * factor, truth["pixels"], w, h)
    # a factor, on top
    out["rescale_factor_result"] = sorted(bpy.ops.da3.rescale(mode="FACTOR", factor=0.5))
    out["camera_location_ratio_error_2"] = float(np.abs(_camera_locations(scene, cam, frames)
                                                        - 0.5 * factor * cam_locs_before).max())
    out["projection_error_after_factor_px"] = projection_errors(
        scene, cam, frames, truth["points_blender"] * factor * 0.5, truth["pixels"], w, h)
    out["scale_property_2"] = coll.get("da3_scale_factor")

    # --- Gaussians and depth meshes follow the rescale
    bpy.ops.import_scene.da3_npz(filepath=str(work / "splats.npz"), threshold_mode="NONE", depth_meshes=True)
    sc = bpy.data.collections["splats"]
    splats = next(o for o in sc.objects if o.modifiers.get("DA3 Splats"))
    depth_mesh = next(o for o in sc.objects if o.type == "MESH" and "da3_view" in o)
    g0 = np.zeros(3 * len(splats.data.vertices))
    splats.data.attributes["scale"].data.foreach_get("vector", g0)
    m0 = np.zeros(3 * len(splats.data.vertices))
    splats.data.vertices.foreach_get("co", m0)
    d0 = np.zeros(3 * len(depth_mesh.data.vertices))
    depth_mesh.data.vertices.foreach_get("co", d0)
    bpy.context.view_layer.objects.active = splats
    bpy.ops.da3.rescale(mode="FACTOR", factor=3.0)
    g1, m1, d1 = np.zeros_like(g0), np.zeros_like(m0), np.zeros_like(d0)
    splats.data.attributes["scale"].data.foreach_get("vector", g1)
    splats.data.vertices.foreach_get("co", m1)
    depth_mesh.data.vertices.foreach_get("co", d1)
    out["splat_scale_ratio_error"] = float(np.abs(g1 - 3 * g0).max())
    out["splat_mean_ratio_error"] = float(np.abs(m1 - 3 * m0).max())
    out["depth_mesh_ratio_error"] = float(np.abs(d1 - 3 * d0).max() / max(1e-9, np.abs(d0).max()))

    # --- an image sequence (every 2nd file, numbered from 1): keys where the clip shows them
    # numbered files stay separate cameras unless asked
    bpy.ops.import_scene.da3_npz(filepath=str(work / "sequence.npz"), threshold_mode="NONE", points=False)
    out["sequence_default_cameras"] = sum(o.type == "CAMERA" for o in bpy.data.collections["sequence"].objects)
    bpy.data.collections["sequence"].name = "sequence as photos"
    bpy.ops.import_scene.da3_npz(filepath=str(work / "sequence.npz"), threshold_mode="NONE", points=False,
                                 image_sequence=True)
    seq_cam = next(o for o in bpy.data.collections["sequence"].objects if o.type == "CAMERA")
    seq_bg = seq_cam.data.background_images[0]
    from PIL import Image

    out["sequence"] = {
        "cameras": sum(o.type == "CAMERA" for o in bpy.data.collections["sequence"].objects),
        "key_frames": sorted({int(k.co[0]) for fc in _fcurves(seq_cam.animation_data) for k in fc.keyframe_points}),
        "frame_range": [scene.frame_start, scene.frame_end],
        "clip_source": seq_bg.clip.source, "clip_file": bpy.path.abspath(seq_bg.clip.filepath),
        "clip_shown": clip_frames_shown(scene, seq_bg.clip, [1, 7], [
            np.asarray(Image.open(f)).astype(np.float64) for f in sorted((work / "frames").iterdir())], work),
        "clip_frame_start": seq_bg.clip.frame_start, "clip_frames": seq_bg.clip.frame_duration,
        "projection_error_px": projection_errors(scene, seq_cam, truth["seq_frames"], truth["seq_points_blender"],
                                                 truth["seq_pixels"], w, h),
    }

    # --- footage larger than the network's pictures: the camera at the footage's size
    bpy.ops.import_scene.da3_npz(filepath=str(work / "lowres.npz"), threshold_mode="NONE", points=False)
    low_cam = next(o for o in bpy.data.collections["lowres"].objects if o.type == "CAMERA")
    out["lowres"] = {
        "resolution": [scene.render.resolution_x, scene.render.resolution_y],
        "pixel_aspect": [scene.render.pixel_aspect_x, scene.render.pixel_aspect_y],
        "projection_error_px": projection_errors(scene, low_cam, frames, truth["low_points_blender"], truth["pixels"],
                                                 scene.render.resolution_x, scene.render.resolution_y),
    }

    # --- a point budget: a uniform subset of exactly that many points
    bpy.ops.import_scene.da3_npz(filepath=str(work / "shot.npz"), threshold_mode="NONE", cameras=False,
                                 max_points=1000)
    budget = next(o for o in bpy.data.collections["shot.001"].objects if o.type == "MESH")
    out["budget_points"] = len(budget.data.vertices)
    bpy.data.collections["shot.001"].name = "budget"

    # --- non-square pixels: the scene's pixel aspect
    bpy.ops.import_scene.da3_npz(filepath=str(work / "anamorphic.npz"), threshold_mode="NONE", points=False)
    an_cam = next(o for o in bpy.data.collections["anamorphic"].objects if o.type == "CAMERA")
    out["anamorphic"] = {
        "pixel_aspect": [scene.render.pixel_aspect_x, scene.render.pixel_aspect_y],
        "projection_error_px": projection_errors(scene, an_cam, frames, truth["an_points_blender"], truth["an_pixels"],
                                                 scene.render.resolution_x, scene.render.resolution_y),
    }

    # --- a zoom: the lens is keyed too
    bpy.ops.import_scene.da3_npz(filepath=str(work / "zoom.npz"), threshold_mode="NONE", points=False)
    zoom_cam = next(o for o in bpy.data.collections["zoom"].objects if o.type == "CAMERA")
    lens_curves = [fc for fc in _fcurves(zoom_cam.data.animation_data) if fc.data_path == "lens"]
    lens = [k.co[1] for k in lens_curves[0].keyframe_points] if lens_curves else [1.0]
    out["zoom"] = {
        "lens_animated": zoom_cam.data.animation_data is not None, "lens_keys": len(lens),
        "lens_last_over_first": lens[-1] / lens[0],
        "projection_error_px": projection_errors(scene, zoom_cam, frames, truth["zoom_points_blender"],
                                                 truth["zoom_pixels"], w, h),
    }

    # --- an older scene file (no frame fields) still imports as separate cameras
    bpy.ops.import_scene.da3_npz(filepath=str(work / "old.npz"), threshold_mode="NONE", points=False)
    old = bpy.data.collections["old"]
    out["old_cameras"] = sum(o.type == "CAMERA" for o in old.objects)
    out["old_animated"] = any(o.animation_data is not None for o in old.objects)
    # and the animated camera can be turned off for a video's scene
    bpy.ops.import_scene.da3_npz(filepath=str(work / "shot.npz"), threshold_mode="NONE", points=False,
                                 animated=False)
    out["unanimated_cameras"] = sum(o.type == "CAMERA" for o in bpy.data.collections["shot.001"].objects)

    # --- a failing import leaves the scene settings and data as they were
    n_objects, n_clips, n_actions = len(bpy.data.objects), len(bpy.data.movieclips), len(bpy.data.actions)
    scene.frame_start, scene.frame_end, scene.render.fps = 5, 77, 13
    importer = __import__("bl_ext.user_default.da3_plugins.importer", fromlist=["importer"])
    original = importer._point_object

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    importer._point_object = broken
    try:
        try:
            bpy.ops.import_scene.da3_npz(filepath=str(work / "shot.npz"), threshold_mode="NONE")
            out["broken_import"] = "FINISHED"
        except RuntimeError as exc:
            out["broken_import"] = str(exc).strip().splitlines()[-1]
    finally:
        importer._point_object = original
    out["broken_left_nothing"] = ((len(bpy.data.objects), len(bpy.data.movieclips), len(bpy.data.actions))
                                  == (n_objects, n_clips, n_actions))
    out["broken_kept_settings"] = [scene.frame_start, scene.frame_end, scene.render.fps]

    # --- a long shot: 2000 keyed frames, every pose exact (no Euler flips); its video is gone
    t = time.perf_counter()
    bpy.ops.import_scene.da3_npz(filepath=str(work / "long.npz"), threshold_mode="NONE", points=False)
    long_seconds = time.perf_counter() - t
    long_cam = next(o for o in bpy.data.collections["long"].objects if o.type == "CAMERA")
    expected = np.load(work / "long_truth.npy")
    err = 0.0
    for f in range(1, 2001, 7):
        scene.frame_set(f)
        err = max(err, float(np.abs(np.array(long_cam.matrix_world) - expected[f - 1]).max()))
    out["long"] = {"seconds": long_seconds, "keys": len(_fcurves(long_cam.animation_data)[0].keyframe_points),
                   "frame_range": [scene.frame_start, scene.frame_end], "fps": scene.render.fps,
                   "max_matrix_error": err, "background": len(long_cam.data.background_images)}

    # --- reconstruct a video through the worker (blocking path): one animated camera
    prefs = bpy.context.preferences.addons["bl_ext.user_default.da3_plugins"].preferences
    prefs.executable = str(work / "da3p")
    prefs.device = "cpu"
    worker = {}
    for label, stride in (("every", 1), ("stride2", 2)):
        before_colls = set(bpy.data.collections.keys())
        t = time.perf_counter()
        res = bpy.ops.da3.reconstruct(filepath=str(work / "small.mp4"), model="embedded", process_res=56,
                                      frame_stride=stride, create_points=True)
        made = [bpy.data.collections[c] for c in set(bpy.data.collections.keys()) - before_colls]
        cams_made = [o for c in made for o in c.objects if o.type == "CAMERA"]
        worker[label] = {
            "result": sorted(res), "seconds": time.perf_counter() - t, "cameras": len(cams_made),
            "key_frames": sorted({int(k.co[0]) for fc in _fcurves(cams_made[0].animation_data)
                                  for k in fc.keyframe_points}) if cams_made and cams_made[0].animation_data else [],
            "frame_range": [scene.frame_start, scene.frame_end], "fps": scene.render.fps,
            "resolution": [scene.render.resolution_x, scene.render.resolution_y],
            "background": cams_made[0].data.background_images[0].source if cams_made and
            len(cams_made[0].data.background_images) else None,
        }
    # an image sequence folder, every 2nd file, as footage
    before_colls = set(bpy.data.collections.keys())
    res = bpy.ops.da3.reconstruct(directory=str(work / "frames"), model="embedded", process_res=56, frame_stride=2,
                                  image_sequence=True, create_points=False)
    made = [bpy.data.collections[c] for c in set(bpy.data.collections.keys()) - before_colls]
    cams_made = [o for c in made for o in c.objects if o.type == "CAMERA"]
    worker["sequence"] = {
        "result": sorted(res), "cameras": len(cams_made),
        "key_frames": sorted({int(k.co[0]) for fc in _fcurves(cams_made[0].animation_data)
                              for k in fc.keyframe_points}) if cams_made else [],
        "clip_source": cams_made[0].data.background_images[0].clip.source if cams_made else None,
    }
    # the panel draws every setting
    from types import SimpleNamespace

    shown = []
    scene.da3_reconstruct.create_depth_meshes = True
    bpy.types.DA3_PT_reconstruct.draw(SimpleNamespace(layout=FakeLayout(shown)), bpy.context)
    scene.da3_reconstruct.create_depth_meshes = False
    out["panel_shows"] = shown
    # the panel's settings drive the same operator
    settings = scene.da3_reconstruct
    settings.source = str(work / "small.mp4")
    settings.model = "embedded"
    settings.process_res = 56
    settings.frame_stride = 3
    settings.max_views = 3
    settings.chunk_overlap = 2
    settings.loop_closure = "off"
    settings.scale = 2.0
    before_colls = set(bpy.data.collections.keys())
    res = bpy.ops.da3.reconstruct(use_panel=True)
    made = [bpy.data.collections[c] for c in set(bpy.data.collections.keys()) - before_colls]
    cams_made = [o for c in made for o in c.objects if o.type == "CAMERA"]
    options = made[0].get("da3_options", "") if made else ""
    worker["panel"] = {"result": sorted(res), "cameras": len(cams_made),
                       "key_frames": sorted({int(k.co[0]) for fc in _fcurves(cams_made[0].animation_data)
                                             for k in fc.keyframe_points}) if cams_made else [],
                       "options": options}
    # a file that is no video: one line naming it, nothing created
    n_objects, n_clips = len(bpy.data.objects), len(bpy.data.movieclips)
    try:
        r = bpy.ops.da3.reconstruct(filepath=str(work / "bad.mp4"), model="embedded", process_res=56)
        bad = [sorted(r)]
    except RuntimeError as exc:
        bad = ["ERROR", str(exc).strip().splitlines()[-1]]
    out["bad_video"] = {"result": bad, "objects_added": len(bpy.data.objects) - n_objects,
                        "clips_added": len(bpy.data.movieclips) - n_clips}
    bpy.ops.da3.stop_worker()
    out["worker"] = worker

    repos = [r.module for r in bpy.context.preferences.extensions.repos]
    bpy.ops.extensions.package_uninstall(repo_index=repos.index("user_default"), pkg_id="da3_plugins")
    out["after_uninstall_settings"] = hasattr(bpy.types.Scene, "da3_reconstruct")
    out["after_uninstall_rescale"] = hasattr(bpy.types, "DA3_OT_rescale")
    return out


def _camera_locations(scene, cam, frames) -> np.ndarray:
    locs = []
    for f in frames:
        scene.frame_set(int(f))
        locs.append(list(cam.matrix_world.translation))
    return np.array(locs)


def _fcurves(anim_data):
    if anim_data is None or anim_data.action is None:
        return []
    action = anim_data.action
    out = []
    for layer in action.layers:
        for strip in layer.strips:
            bag = strip.channelbag(anim_data.action_slot)
            if bag is not None:
                out.extend(bag.fcurves)
    return out


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2])
    print(json.dumps(result))
