"""Time the Open3D adapter on a synthetic scene: 50 views of 378x504 (prints a table).

    .venv/bin/python benchmarks/bench_open3d.py [--views 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from da3_plugins import open3d as da3o3d
from da3_plugins.core.synthetic import make_scene


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--views", type=int, default=50)
    p.add_argument("--height", type=int, default=378)
    p.add_argument("--width", type=int, default=504)
    args = p.parse_args()
    t = time.perf_counter()
    scene = make_scene(num_views=args.views, height=args.height, width=args.width, seed=0, arc_deg=300)
    gen = time.perf_counter() - t
    rec = scene.to_reconstruction()
    rows = [("synthetic scene (ray casting)", gen, "")]
    t = time.perf_counter()
    pcd = da3o3d.to_point_cloud(rec)
    rows.append(("to_point_cloud", time.perf_counter() - t, f"{len(pcd.points):,} points"))
    t = time.perf_counter()
    down = da3o3d.to_point_cloud(rec, voxel_size=da3o3d.default_voxel_size(rec))
    rows.append(("to_point_cloud + voxel down-sampling", time.perf_counter() - t, f"{len(down.points):,} points"))
    t = time.perf_counter()
    mesh = da3o3d.fuse_tsdf(rec)
    fuse = time.perf_counter() - t
    verts = np.asarray(mesh.vertices)
    precision = float((scene.distance_to_surface(verts) < 0.01 * scene.extent).mean())
    rows.append(("fuse_tsdf (default voxel 1/400 of extent)", fuse,
                 f"{len(mesh.triangles):,} triangles, {precision:.1%} of vertices within 1% of the extent"))
    print(f"Open3D adapter, {args.views} views of {args.height}x{args.width} (CPU)\n")
    print("| step | seconds | result |\n|---|---|---|")
    for name, sec, note in rows:
        print(f"| {name} | {sec:.2f} | {note} |")


if __name__ == "__main__":
    main()
