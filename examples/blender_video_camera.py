"""DA3 as a camera tracker in Blender, end to end, headless: footage in, CG composited over it out.

    python examples/blender_video_camera.py [--out docs/images/blender_video_camera.png]

1. Films a synthetic room with a moving camera (``core.synthetic.make_shot``) and writes the
   footage as an mp4 (``core.export.video.write_video``).
2. Reconstructs the mp4 through the real pipeline with the ground-truth predictor (what a
   perfect DA3 would predict, in its frame: the first view's camera, unit scale), which records
   where the frames came from (the video, its rate, the frame indices) in the scene file.
3. In Blender (the ``bpy`` module): installs the add-on built from this checkout, imports the
   scene file (one camera keyed on every frame, the footage as its background clip), puts a CG
   object on the floor with a shadow catcher, and renders one frame with Cycles.
4. Composites the render over that frame of the footage and saves, side by side, the source
   frame and the composite.

Needs the ``blender`` extra (bpy).  Everything runs in a temporary folder; only ``--out`` is
written.  About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_footage(work: Path, frames: int, height: int, width: int):
    from da3_plugins.core.export.video import write_video
    from da3_plugins.core.pipeline import reconstruct
    from da3_plugins.core.synthetic import GroundTruthPredictor, make_shot

    scene, ext, ks, images, depth = make_shot(frames, height=height, width=width, seed=3, turn_deg=60)
    video = write_video(work / "shot.mp4", images, fps=24)
    rec = reconstruct(GroundTruthPredictor(ext, ks, depth), video, fps=None, process_res=max(height, width))
    rec.save(work / "shot.npz")
    return scene, video, rec


def to_reconstruction_frame(scene, rec):
    """The similarity from the synthetic world to the reconstruction's: (scale s, rotation R, t)
    with x_rec = s (R x + t) (the first view's camera frame, scale read off the camera centres)."""
    from da3_plugins.core import conventions as conv

    true_c, rec_c = conv.camera_centers(scene.extrinsics), rec.camera_centers
    s = float(np.median(np.linalg.norm(rec_c[1:] - rec_c[0], axis=1) / np.linalg.norm(true_c[1:] - true_c[0], axis=1)))
    return s, scene.extrinsics[0][:, :3], scene.extrinsics[0][:, 3]


def free_floor_spot(scene, views, floor_y: float, radius: float) -> np.ndarray:
    """A floor point whose disc of ``radius`` is seen unoccluded, well inside the picture, by
    every one of ``views`` (the true depth there is the floor's), nearest the pictures' middle."""
    h, w = scene.depth.shape[1:]
    first = views[0]
    w2c = scene.extrinsics[first]
    centre = -w2c[:, :3].T @ w2c[:, 3]
    k_inv = np.linalg.inv(scene.intrinsics[first])
    ring = radius * np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)), np.zeros(12),
                              np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], 1)
    best, best_cost = None, np.inf
    for v in np.linspace(0.55, 0.95, 17) * h:
        for u in np.linspace(0.1, 0.9, 33) * w:
            ray = w2c[:, :3].T @ k_inv @ np.array([u, v, 1.0])
            if ray[1] <= 0:
                continue
            spot = centre + ray * (floor_y - centre[1]) / ray[1]
            pts = np.vstack([spot, spot + ring, spot - [0, 2 * radius / 2.5, 0]])  # the disc and the ball's top
            cost, ok = 0.0, True
            for view in views:
                e, k = scene.extrinsics[view], scene.intrinsics[view]
                cam = pts @ e[:, :3].T + e[:, 3]
                uv = cam @ k.T
                uv = uv[:, :2] / uv[:, 2:]
                inside = (cam[:, 2] > 0.3) & (uv[:, 0] > 0.08 * w) & (uv[:, 0] < 0.92 * w) & \
                         (uv[:, 1] > 0.08 * h) & (uv[:, 1] < 0.97 * h)
                if not inside.all():
                    ok = False
                    break
                seen = scene.depth[view][uv[:, 1].astype(int), uv[:, 0].astype(int)]
                if not (np.abs(seen[:13] - cam[:13, 2]) < 0.02 * cam[:13, 2]).all():  # floor there, not an object
                    ok = False
                    break
                cost += float(np.abs(uv[0] / [w, h] - [0.5, 0.7]).sum())
            if ok and cost < best_cost:
                best, best_cost = spot, cost
    if best is None:
        raise SystemExit("no free floor spot seen by every frame: pick other --frames")
    return best


def render_in_blender(work: Path, zip_path: Path, frames, floor_point_cv: np.ndarray, up_cv: np.ndarray, size: float):
    import bpy

    from da3_plugins.core import conventions as conv

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default", enable_on_install=True)
    bpy.ops.import_scene.da3_npz(filepath=str(work / "shot.npz"), threshold_mode="NONE")
    scene = bpy.context.scene
    coll = bpy.data.collections["shot"]
    for obj in coll.objects:
        if obj.type == "MESH":
            obj.hide_render = True  # the reconstruction guides, the footage is the picture
    # the CG: a metallic sphere standing on the floor, and a shadow catcher under it (the floor is
    # not level in the reconstruction's frame: "up" is the first camera's)
    from mathutils import Vector

    floor = conv.points_to_blender(floor_point_cv[None])[0]
    up = Vector(conv.points_to_blender(up_cv[None])[0].tolist()).normalized()
    bpy.ops.mesh.primitive_uv_sphere_add(radius=size, location=tuple(floor + size * np.array(up)), segments=48,
                                         ring_count=24)
    ball = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    mat = bpy.data.materials.new("CG")
    mat.use_nodes = True
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Base Color"].default_value = (0.8, 0.1, 0.05, 1)
    bsdf.inputs["Roughness"].default_value = 0.25
    bsdf.inputs["Metallic"].default_value = 0.3
    ball.data.materials.append(mat)
    bpy.ops.mesh.primitive_plane_add(size=size * 12, location=tuple(floor))
    catcher = bpy.context.active_object
    catcher.rotation_mode = "QUATERNION"
    catcher.rotation_quaternion = up.to_track_quat("Z", "Y")
    catcher.is_shadow_catcher = True
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.6, 0.3, 0.8)
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.use_nodes = True
    world.node_tree.nodes["Background"].inputs["Strength"].default_value = 0.6
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 48
    scene.cycles.use_denoising = False
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    out = []
    for frame in frames:
        scene.render.filepath = str(work / f"cg_{frame:03d}.png")
        scene.frame_set(frame)
        bpy.ops.render.render(write_still=True)
        out.append(Path(scene.render.filepath))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "blender_video_camera.png"))
    p.add_argument("--frames", type=int, nargs="+", default=[3, 22],
                   help="scene frames to render (1-based; the CG object is placed from the first)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="da3_video_") as tmp:
        work = Path(tmp)
        # keep Blender's user files in the temporary folder (set before bpy is imported)
        os.environ.update(BLENDER_USER_RESOURCES=str(work / "user"), XDG_CACHE_HOME=str(work / "cache"))
        from da3_plugins.blender_build import build_extension

        zip_path = build_extension(work / "dist")
        frames, height, width = 24, 378, 504
        scene, video, rec = make_footage(work, frames, height, width)
        # a spot on the floor (world y down: the floor is the plane y = floor_y) seen at pixel
        # (0.52 W, 0.86 H) of the rendered frame, between the room's objects
        floor_y = scene.bounds[1][1]
        size = 0.16
        spot = free_floor_spot(scene, [f - 1 for f in args.frames], floor_y, 2.5 * size)
        s, r, t = to_reconstruction_frame(scene, rec)  # the synthetic world -> the reconstruction's
        renders = render_in_blender(work, zip_path, args.frames, s * (r @ spot + t), r @ np.array([0.0, -1.0, 0.0]),
                                    size=s * size)
        from PIL import Image

        import cv2

        rows = []
        for frame, cg in zip(args.frames, renders):
            cap = cv2.VideoCapture(str(video))
            cap.set(cv2.CAP_PROP_POS_FRAMES, frame - 1)  # scene frame f shows the video's frame f - 1
            ok, bgr = cap.read()
            cap.release()
            if not ok:
                raise SystemExit(f"{video}: frame {frame - 1} cannot be read")
            footage = bgr[..., ::-1].astype(np.float32)
            rgba = np.asarray(Image.open(cg).convert("RGBA")).astype(np.float32) / 255.0
            comp = rgba[..., :3] * 255.0 * rgba[..., 3:] + footage * (1 - rgba[..., 3:])
            rows.append(np.concatenate([footage, np.full((height, 8, 3), 255.0), comp], 1))
            rows.append(np.full((8, rows[-1].shape[1], 3), 255.0))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(np.concatenate(rows[:-1], 0), 0, 255).round().astype(np.uint8)).save(out)
        print(f"wrote {out}: one row per scene frame {args.frames}; left the footage's frame (f - 1), right a "
              "Cycles render from the imported animated camera at scene frame f over it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
