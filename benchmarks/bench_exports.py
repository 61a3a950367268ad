"""Time the scene's points and the point exports on a synthetic reconstruction (prints a table).

    .venv/bin/python benchmarks/bench_exports.py [--views 50] [--repeat 3]

Every step back-projects depth (``Reconstruction.world_points`` / ``points`` and the writers
built on them), so this is the benchmark for changes to that path.  Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from da3_plugins.core.export import write_colmap, write_glb, write_point_ply
from da3_plugins.core.reconstruction import Reconstruction


def synthetic_reconstruction(views: int, height: int, width: int) -> Reconstruction:
    """Views on a circle looking at the origin, with smooth positive depth (no ray casting, so
    the timing is the exports' alone)."""
    rng = np.random.default_rng(0)
    ext = np.zeros((views, 3, 4))
    for i in range(views):
        a = 2 * np.pi * i / views
        c = np.array([3 * np.cos(a), 0.0, 3 * np.sin(a)])
        z = -c / np.linalg.norm(c)
        x = np.cross([0.0, -1.0, 0.0], z)
        x /= np.linalg.norm(x)
        r = np.stack([x, np.cross(z, x), z])
        ext[i] = np.concatenate([r, -(r @ c)[:, None]], 1)
    k = np.array([[0.8 * width, 0, width / 2], [0, 0.8 * width, height / 2], [0, 0, 1]])
    yy, xx = np.mgrid[0:height, 0:width]
    depth = (2.5 + 0.3 * np.sin(xx / 40.0) * np.cos(yy / 30.0)).astype(np.float32)
    return Reconstruction(images=rng.integers(0, 255, (views, height, width, 3), dtype=np.uint8),
                          depth=np.repeat(depth[None], views, 0),
                          conf=(1 + 3 * rng.random((views, height, width))).astype(np.float32),
                          extrinsics=ext, intrinsics=np.tile(k, (views, 1, 1)))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--views", type=int, default=50)
    p.add_argument("--height", type=int, default=378)
    p.add_argument("--width", type=int, default=504)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rec = synthetic_reconstruction(args.views, args.height, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        steps = [
            ("world_points (every pixel)", lambda: rec.world_points()),
            ("points(conf_threshold='auto')", lambda: rec.points(conf_threshold="auto")),
            ("points(stride=4)", lambda: rec.points(stride=4)),
            ("write_point_ply (every point)", lambda: write_point_ply(out / "p.ply", rec)),
            ("write_glb (auto threshold)", lambda: write_glb(out / "s.glb", rec)),
            ("write_colmap (stride 2, auto)", lambda: write_colmap(out / f"c{time.perf_counter_ns()}", rec)),
        ]
        rows = [(name, best(fn, args.repeat)) for name, fn in steps]
    print(f"Points and exports, {args.views} views of {args.height}x{args.width} (CPU, best of {args.repeat})\n")
    print("| step | seconds |\n|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.3f} |")


if __name__ == "__main__":
    main()
