"""Photos to an Open3D mesh and point cloud, with a rendered check from one input camera.

    python examples/open3d_reconstruct.py PHOTOS... --model MODEL_DIR -o out/
    python examples/open3d_reconstruct.py --synthetic -o out/     # no model: a ray-cast test scene

Writes out/points.ply, out/mesh.ply and out/render.png (input photo | mesh rendered from its
camera), and prints the fused mesh's size and, for the synthetic scene, its accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import open3d as o3d
from PIL import Image

from da3_plugins import open3d as da3o3d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="*", help="photos, folders or videos")
    p.add_argument("--model", help="DA3 model folder, .safetensors or hub id")
    p.add_argument("--synthetic", action="store_true", help="use a synthetic scene's ground truth instead of a model")
    p.add_argument("-o", "--output", default="open3d_out")
    p.add_argument("--view", type=int, default=0, help="camera to render from")
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    scene = None
    if args.synthetic:
        from da3_plugins.core.synthetic import make_scene

        scene = make_scene(num_views=8, height=126, width=168, seed=0, arc_deg=120)
        rec = scene.to_reconstruction()
    else:
        if not args.images or not args.model:
            p.error("give photos and --model, or --synthetic")
        from da3_plugins.core import load_model

        rec = load_model(args.model).reconstruct(args.images)

    start = time.time()
    mesh = da3o3d.fuse_tsdf(rec, conf_threshold="auto" if rec.conf is not None else None)
    print(f"fused {len(rec)} views into {len(mesh.vertices)} vertices in {time.time() - start:.1f} s")
    pcd = da3o3d.to_point_cloud(rec, conf_threshold="auto" if rec.conf is not None else None, estimate_normals=True)
    o3d.io.write_triangle_mesh(str(out / "mesh.ply"), mesh)
    o3d.io.write_point_cloud(str(out / "points.ply"), pcd)

    params, _ = da3o3d.to_camera_parameters(rec, original_size=False)
    rgb, depth = da3o3d.render_offscreen(mesh, params[args.view])
    Image.fromarray(np.concatenate([rec.images[args.view], rgb], 1)).save(out / "render.png")
    diff = float(np.abs(rgb.astype(float) - rec.images[args.view]).mean())
    print(f"render from camera {args.view}: mean |photo - render| = {diff:.1f} (of 255) -> {out / 'render.png'}")
    if scene is not None:
        from da3_plugins.core.geometry import chamfer_and_fscore

        s = chamfer_and_fscore(np.asarray(mesh.vertices), rec.points(stride=2).positions, threshold=0.01 * scene.extent)
        print(f"mesh vs truth: F-score {s.fscore:.3f} at 1% of the scene extent, Chamfer {s.chamfer:.4f} "
              f"(extent {scene.extent:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
