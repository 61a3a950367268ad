"""Points and exports of a large scene, before and after, side by side (prints markdown tables).

    .venv/bin/python benchmarks/bench_exports.py [--views 100] [--repeat 3] [--baseline REV]
                                                 [--scene PATH] [--synthetic] [--png] [--no-memory]

The scene (default): the six bundled demo photos reconstructed by the embedded model at
process_res 504 (504x378), tiled to ``--views`` views with slightly moved cameras, saved as a
scene folder (memory maps, as ``da3p`` reads big scenes).  ``--synthetic`` uses smooth synthetic
depth instead (no torch needed); ``--scene`` any saved scene.

"Before" is the ``core`` package of ``--baseline`` (a git revision; default: the commit before
the exports were made fast, issue 17 part 5), extracted with ``git archive`` and imported beside
the working tree's as ``baseline_core``.  Every step runs before, after, before, after ... in one
process (best of ``--repeat``), so both see the same machine load; the load average is printed.
Then each step runs once more per version in a fresh process for its peak memory (peak RSS
above the RSS after loading the scene; the scene's memory maps count when read), and the
outputs of both versions are compared: bytes, and pixels for PNGs (their compression changed).

``--png`` adds the time and size of PNG compression levels on the scene's pictures (how
:data:`core.export.depth_images.PNG_OPTIONS` was chosen).
"""

from __future__ import annotations

import argparse
import filecmp
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "8865414"
"""The last commit before the export speed work (points in blocks of views, Pillow's default PNGs)."""

# step name -> (what it writes or returns, call(core_package, rec, out_path))
STEPS: Dict[str, Tuple[str, str]] = {
    "points()": ("", "rec.points()"),
    "points(conf_threshold='auto')": ("", "rec.points(conf_threshold='auto')"),
    "world_points()": ("", "rec.world_points()"),
    "ply (auto threshold)": ("points.ply", "E.write_point_ply(out, rec, conf_threshold='auto')"),
    "glb": ("scene.glb", "E.write_glb(out, rec)"),
    "colmap": ("sparse", "E.write_colmap(out, rec)"),
    "nerfstudio": ("nerfstudio", "E.write_nerfstudio(out, rec)"),
    "depth": ("depth", "E.write_depth_images(out, rec)"),
}
"""Each export as ``da3p export`` calls it (registry defaults: conf_threshold "auto")."""

ISSUE_FIGURES = {"points()": "10-12", "ply (auto threshold)": "13.9", "glb": "13.8", "nerfstudio": "11.3",
                 "depth": "36.8"}
"""Seconds measured when issue 17 was written (100 views of 504x378; the exports through ``da3p
export``, so with start-up and reading the scene file): shown beside a 100-view run."""


# ------------------------------------------------------------------------------- the scenes


def synthetic_reconstruction(views: int, height: int, width: int):
    """Views on a circle looking at the origin, with smooth positive depth (no ray casting, so
    the timing is the exports' alone)."""
    from da3_plugins.core.reconstruction import Reconstruction

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


def demo_reconstruction(views: int):
    """The bundled demo photos through the embedded model at 504, tiled to ``views`` views:
    each copy's camera turned by ~1 degree and moved by ~2% of the scene, depth scaled by ~2%."""
    from da3_plugins.core import load_model
    from da3_plugins.core.reconstruction import Reconstruction

    photos = sorted((ROOT / "da3_plugins" / "data" / "demo").glob("*.png"))
    src = load_model("embedded").reconstruct([str(p) for p in photos], process_res=504)
    rng = np.random.default_rng(0)
    idx = np.arange(views) % len(src)
    ext = src.extrinsics[idx].copy()
    for i in range(views):
        a = rng.normal(0, 0.02, 3)
        th = np.linalg.norm(a)
        k = a / th
        kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        r = np.eye(3) + np.sin(th) * kx + (1 - np.cos(th)) * kx @ kx
        ext[i, :, :3] = r @ ext[i, :, :3]
        ext[i, :, 3] = r @ ext[i, :, 3] + rng.normal(0, 0.02, 3)
    depth = (src.depth[idx] * (1 + 0.02 * rng.standard_normal((views, 1, 1)))).astype(np.float32)
    conf = (src.conf[idx] * (1 + 0.05 * rng.random((views, 1, 1)))).astype(np.float32)
    return Reconstruction(images=src.images[idx], depth=depth, conf=conf, extrinsics=ext,
                          intrinsics=src.intrinsics[idx], original_sizes=src.original_sizes[idx],
                          pixel_transform=src.pixel_transform[idx], image_names=[f"view_{i:04d}" for i in range(views)],
                          model=src.model, options=src.options)


# ------------------------------------------------------------------------------- the two versions


def extract_baseline(rev: str, into: Path) -> Optional[Path]:
    """``git archive REV core`` unpacked as ``into/baseline_core``; None without git."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "core"], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no baseline ({exc}); timing the working tree only", file=sys.stderr)
        return None
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(into)
    (into / "core").rename(into / "baseline_core")
    return into


def packages(baseline_dir: Optional[Path]) -> Dict[str, object]:
    """{"before": baseline_core, "after": da3_plugins.core} (imported)."""
    import importlib

    found = {}
    if baseline_dir is not None:
        sys.path.insert(0, str(baseline_dir))
        found["before"] = importlib.import_module("baseline_core")
    found["after"] = importlib.import_module("da3_plugins.core")
    return found


def run_step(pkg, rec, step: str, out: Path):
    import importlib

    E = importlib.import_module(pkg.__name__ + ".export")  # noqa: N806  (used by the step's text)
    return eval(STEPS[step][1], {"E": E, "rec": rec, "out": out})  # noqa: S307  (our own table)


def load_scene(pkg, path: Path):
    import importlib

    return importlib.import_module(pkg.__name__ + ".reconstruction").Reconstruction.load(path)


# ------------------------------------------------------------------------------- measuring


def output_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def same_outputs(a: Path, b: Path) -> str:
    """"bytes" (every file equal), "pixels" (PNGs decode equal, the rest byte-equal) or what differs."""
    from PIL import Image

    if a.is_file():
        return "bytes" if filecmp.cmp(a, b, shallow=False) else "DIFFERENT"
    fa = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    fb = sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    if fa != fb:
        return "DIFFERENT files"
    verdict = "bytes"
    for rel in fa:
        if filecmp.cmp(a / rel, b / rel, shallow=False):
            continue
        if rel.endswith(".png"):
            x, y = np.asarray(Image.open(a / rel)), np.asarray(Image.open(b / rel))
            if x.dtype == y.dtype and np.array_equal(x, y):
                verdict = "pixels"
                continue
        return f"DIFFERENT ({rel})"
    return verdict


def peak_memory(which: str, step: str, scene: Path, baseline_dir: Optional[Path]) -> Tuple[float, float]:
    """(MB allocated at the peak, MB of peak RSS) of one step, above what the loaded scene
    held, in a fresh process.  Allocated: Python's and numpy's allocations (``tracemalloc``; not
    Pillow's own few per-picture buffers).  RSS (VmHWM, Linux) also counts the scene's memory
    maps as they are read: page cache the system can drop, not memory the export holds."""
    code = f"""
import json, sys, tempfile, tracemalloc
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
import bench_exports as b
base = {'' if baseline_dir is None else str(baseline_dir)!r}
pkg = b.packages(Path(base) if base else None)[{which!r}]
rec = b.load_scene(pkg, Path({str(scene)!r}))
def status(key):
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ':'))
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # the peak RSS (VmHWM) starts again from here
rss0 = status('VmRSS')
with tempfile.TemporaryDirectory() as tmp:
    if sys.argv[1] == 'tracemalloc':
        tracemalloc.start()
    b.run_step(pkg, rec, {step!r}, Path(tmp) / 'out')
    peak = tracemalloc.get_traced_memory()[1] if tracemalloc.is_tracing() else 0
print(json.dumps([peak / 1e6, (status('VmHWM') - rss0) / 1e6]))
"""
    found = []
    for mode in ("tracemalloc", "rss"):  # tracing slows numpy down and must not inflate the RSS run
        res = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, cwd=ROOT)
        if res.returncode:
            print(res.stderr, file=sys.stderr)
            return float("nan"), float("nan")
        found.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return found[0][0], found[1][1]


def same_clouds(a, b) -> str:
    """"bits" when two results of a points step are equal bit for bit, else what differs."""
    if isinstance(a, np.ndarray):
        equal = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))
        return "bits" if equal else "DIFFERENT"
    for f in ("positions", "colors", "confidence", "view"):
        x, y = getattr(a, f), getattr(b, f)
        if not (x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.view(np.uint8), y.view(np.uint8))):
            return f"DIFFERENT ({f})"
    return "bits"


def png_table(rec, views: int = 6) -> None:
    """Time and size of PNG encoders on the scene's pictures (what the depth export writes):
    Pillow's levels and strategies (adaptive per-row filters, in C), and ``encode_png`` (the
    "Sub" filter in numpy, then zlib) with a few zlib settings."""
    from PIL import Image

    from da3_plugins.core.export import depth_images as di

    n = min(views, len(rec))
    kinds = {
        "photo (RGB)": [np.asarray(rec.images[i]) for i in range(n)],
        "depth colour map": [di.colorize_depth(rec.depth[i]) for i in range(n)],
        "confidence colour map": [di.colorize_confidence(rec.conf[i]) for i in range(n)] if rec.conf is not None else [],
        "16-bit depth": [di.depth_to_uint16(rec.depth[i], 1e-3)[0] for i in range(n)],
    }

    def pillow(**opts):
        def encode(a):
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG", **opts)
            return buf.tell()
        return encode

    def ours(level, strategy):
        def encode(a):
            saved = dict(di.PNG_ZLIB)
            di.PNG_ZLIB.update({8: (level, strategy), 16: (level, strategy)})
            try:
                return sum(len(piece) for piece in di.encode_png(a))
            finally:
                di.PNG_ZLIB.update(saved)
        return encode

    chosen = {v: k for k, v in di.PNG_ZLIB.items()}
    mark = {(1, zlib.Z_HUFFMAN_ONLY): "encode_png, Huffman only", (1, zlib.Z_RLE): "encode_png, RLE",
            (1, zlib.Z_DEFAULT_STRATEGY): "encode_png, level 1", (6, zlib.Z_DEFAULT_STRATEGY): "encode_png, level 6"}
    options = [("Pillow level 6 (before)", pillow()), ("Pillow level 1", pillow(compress_level=1)),
               ("Pillow level 9", pillow(compress_level=9)),
               ("Pillow Huffman only", pillow(compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY))]
    options += [(label + (f" (after, {chosen[opt]}-bit)" if opt in chosen else ""), ours(*opt))
                for opt, label in mark.items()]
    print(f"\nPNG encoders on {n} views ({rec.height}x{rec.width}), per picture, best of 3, one thread; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| picture | encoder | ms | KiB | size / level 6 |\n|---|---|---|---|---|")
    for kind, arrays in kinds.items():
        if not arrays:
            continue
        base = None
        for label, encode in options:
            best, size = float("inf"), 0
            for _ in range(3):
                t = time.perf_counter()
                size = sum(encode(a) for a in arrays)
                best = min(best, time.perf_counter() - t)
            base = base or size
            print(f"| {kind} | {label} | {best / n * 1e3:.1f} | {size / n / 1024:.0f} | {size / base:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--baseline", default=BASELINE, help="git revision of the 'before' code ('' for none)")
    p.add_argument("--scene", type=Path, help="a saved scene (npz or folder) instead of building one")
    p.add_argument("--synthetic", action="store_true", help="synthetic depth instead of the demo photos")
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of: " + ", ".join(STEPS))
    p.add_argument("--png", action="store_true", help="also print the PNG compression table")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = p.parse_args()
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    for s in steps:
        if s not in STEPS:
            p.error(f"--steps: unknown step {s!r}")

    with tempfile.TemporaryDirectory(prefix="bench_exports_") as tmp_name:
        tmp = Path(tmp_name)
        scene = args.scene
        if scene is None:
            rec = synthetic_reconstruction(args.views, 378, 504) if args.synthetic else demo_reconstruction(args.views)
            scene = rec.save(tmp / "scene", form="folder")
            del rec
        baseline_dir = extract_baseline(args.baseline, tmp / "baseline") if args.baseline else None
        pkgs = packages(baseline_dir)
        recs = {name: load_scene(pkg, scene) for name, pkg in pkgs.items()}
        rec = recs["after"]
        pixels = len(rec) * rec.height * rec.width
        load0 = os.getloadavg()[0]
        times: Dict[str, Dict[str, float]] = {s: {} for s in steps}
        sizes: Dict[str, int] = {}
        same: Dict[str, str] = {}
        for step in steps:
            target = STEPS[step][0]
            results: Dict[str, object] = {}
            for r in range(args.repeat):
                for name, pkg in pkgs.items():
                    out = tmp / f"{name}_{r}" / (target or "x")
                    out.parent.mkdir(exist_ok=True)
                    t0 = time.perf_counter()
                    result = run_step(pkg, recs[name], step, out)
                    times[step][name] = min(times[step].get(name, float("inf")), time.perf_counter() - t0)
                    if not target and r == 0 and "before" in pkgs:
                        results[name] = result
                    del result
            if results:
                same[step] = same_clouds(results["before"], results["after"])
                results.clear()
            if target:
                sizes[step] = output_size(tmp / "after_0" / target)
                if "before" in pkgs:
                    same[step] = same_outputs(tmp / "before_0" / target, tmp / "after_0" / target)
            for r in range(args.repeat):
                for name in pkgs:
                    shutil.rmtree(tmp / f"{name}_{r}", ignore_errors=True)
        load1 = os.getloadavg()[0]
        memory: Dict[str, Dict[str, Tuple[float, float]]] = {s: {} for s in steps}
        if not args.no_memory:
            for step in steps:
                for name in pkgs:
                    memory[step][name] = peak_memory(name, step, scene, baseline_dir)

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"\nPoints and exports, {len(rec)} views of {rec.height}x{rec.width} ({pixels / 1e6:.1f} M pixels), "
              f"scene folder (memory maps); {cpus} CPUs, load average {load0:.1f} before and {load1:.1f} after; "
              f"best of {args.repeat}, before ({args.baseline or 'none'}) and after alternating\n")
        issue = len(rec) == 100 and (rec.height, rec.width) == (378, 504)
        print("| step | output |" + (" issue 17 s |" if issue else "") + " before s | after s | speed-up | after MB/s "
              "| peak MB before | peak MB after | output vs before |")
        print("|---|---|" + ("---|" if issue else "") + "---|---|---|---|---|---|---|")
        nan = (float("nan"), float("nan"))
        for step in steps:
            t = times[step]
            before, after = t.get("before"), t["after"]
            size = sizes.get(step)
            rate = f"{size / 1e6 / after:.0f}" if size else ""
            mb, ma = memory[step].get("before", nan), memory[step].get("after", nan)
            print(f"| {step} | {f'{size / 1e6:.0f} MB' if size else ''} | "
                  + (f"{ISSUE_FIGURES.get(step, '')} | " if issue else "")
                  + f"{'' if before is None else f'{before:.2f}'} | {after:.2f} | "
                  f"{'' if before is None else f'{before / after:.1f}x'} | {rate} | "
                  f"{mb[0]:.0f} ({mb[1]:.0f}) | {ma[0]:.0f} ({ma[1]:.0f}) | {same.get(step, '')} |")
        print("\npeak MB: allocated (tracemalloc) and, in brackets, peak RSS above the loaded scene (counts "
              "the scene's memory maps as read); output vs before: bits / bytes equal, pixels: PNGs decode "
              "equal (other files byte-equal)")
        if args.png:
            png_table(rec)


if __name__ == "__main__":
    main()
