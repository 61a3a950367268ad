"""Time the Blender import of a scene file: the extension zip installed into headless Blender
(the ``bpy`` module), a synthetic scene of N views imported (points, cameras), in a fresh
process.  Prints a table.

    .venv/bin/python benchmarks/bench_blender.py [--views 20] [--height 378] [--width 504]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SESSION = r"""
import json, sys, time
import bpy
zip_path, scene = sys.argv[-2:]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
t = time.perf_counter()
bpy.ops.import_scene.da3_npz(filepath=scene, threshold_mode="NONE")
seconds = time.perf_counter() - t
points = sum(len(o.data.vertices) for o in bpy.data.objects if o.type == "MESH")
cameras = sum(o.type == "CAMERA" for o in bpy.data.objects)
print(json.dumps({"seconds": seconds, "points": points, "cameras": cameras}))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--views", type=int, default=20)
    p.add_argument("--height", type=int, default=378)
    p.add_argument("--width", type=int, default=504)
    args = p.parse_args()
    try:
        import bpy  # noqa: F401
    except ImportError:
        print("| step | seconds | result |\n|---|---|---|\n| Blender import | - | bpy is not installed (pip install '.[blender]') |")
        return
    from da3_plugins.blender_build import build_extension
    from da3_plugins.core.synthetic import make_scene

    with tempfile.TemporaryDirectory() as tmp:
        zip_path = build_extension(tmp)
        scene = make_scene(num_views=args.views, height=args.height, width=args.width, seed=0, arc_deg=300)
        path = scene.to_reconstruction().save(Path(tmp) / "scene.npz")
        run = subprocess.run([sys.executable, "-c", SESSION, str(zip_path), str(path)], capture_output=True, text=True,
                             timeout=1800)
        if run.returncode != 0:
            raise SystemExit(run.stderr[-2000:])
        res = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"Blender import (bpy, headless), {args.views} views of {args.height}x{args.width}\n")
    print("| step | seconds | result |\n|---|---|---|")
    print(f"| import_scene.da3_npz | {res['seconds']:.2f} | {res['points']:,} points, {res['cameras']} cameras |")


if __name__ == "__main__":
    main()
