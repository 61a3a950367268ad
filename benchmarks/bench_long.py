"""Long inputs: speed, memory and drift (prints tables).

    .venv/bin/python benchmarks/bench_long.py                      # both tables
    .venv/bin/python benchmarks/bench_long.py --scale --views 100,500 --res 112
    .venv/bin/python benchmarks/bench_long.py --drift

**Scale** runs ``da3p reconstruct`` (embedded model, ``--export scene``) in a subprocess, as a
user would, on N photos of a camera circling a synthetic room (JPEG files rendered at
``--photo-size``), and prints seconds, views/s, the subprocess's peak RSS and the ATE of the
cameras (RMS camera-centre error after a Sim(3) fit to the truth, % of the trajectory length).

**Drift** runs ``reconstruct`` with the ground-truth predictor of ``core.synthetic`` (seeded
per-chunk errors: ``--rot`` degrees, ``--scale`` log-scale, growing along each chunk) on a
loop of 240 views in chunks of 24, and prints ATE for sequential joining and the pose graph
with loop closure (without a loop the graph is a chain: its solution is the sequential one),
with a steady error (the same bias in every chunk) and with random errors; then the same on a
trajectory that never returns (loop closure must accept no loop), and an overlap sweep.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _row(cells, widths):
    """One Markdown table row (aligned for reading in a terminal too)."""
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"


def _header(cells, widths):
    return _row(cells, widths) + "\n|" + "---|" * len(cells)


def _render_photos(folder: Path, n: int, photo_hw, seed: int = 0):
    """N JPEG photos of a loop around a synthetic room, and their true world-to-camera poses."""
    import cv2

    from da3_plugins.core.synthetic.trajectories import make_long_scene

    h, w = photo_hw
    scene, ext, _, images, _ = make_long_scene("loop", n=n, height=h, width=w, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"frame_{i:05d}.jpg"), im[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    return ext


def run_cli(args, env=None):
    """Run da3p in a subprocess: (exit code, seconds, peak RSS in bytes, stderr tail)."""
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "da3_plugins.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.time() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, seconds, usage.ru_maxrss * 1024, err.strip().splitlines()[-3:]


def scale_table(views, resolutions, photo_hw, max_views):
    from da3_plugins.core.reconstruction import Reconstruction
    from da3_plugins.core.synthetic.trajectories import ate

    widths = (6, 6, 9, 8, 10, 8, 8)
    print("\nScale: da3p reconstruct, embedded model, --export scene "
          f"(photos {photo_hw[1]}x{photo_hw[0]} JPEG, {os.cpu_count()} cores)")
    print(_header(("views", "px", "seconds", "views/s", "peak RSS", "passes", "ATE %"), widths))
    with tempfile.TemporaryDirectory() as tmp:
        for n in views:
            photos = Path(tmp) / f"photos_{n}"
            truth = _render_photos(photos, n, photo_hw)
            for res in resolutions:
                out = Path(tmp) / f"out_{n}_{res}"
                args = ["reconstruct", str(photos), "-o", str(out), "--model", "embedded", "--process-res", str(res),
                        "--export", "scene", "--overwrite", "--progress", "none"]
                if max_views:
                    args += ["--max-views", str(max_views)]
                code, seconds, rss, err = run_cli(args)
                if code != 0:
                    print(_row((n, res, "failed", "", "", "", ""), widths), " ".join(err))
                    continue
                rec = Reconstruction.load(next(p for p in out.iterdir() if p.name.startswith("scene")))
                err_pct = ate(rec.extrinsics, truth)
                print(_row((n, res, f"{seconds:.1f}", f"{n / seconds:.1f}", f"{rss / 2**30:.2f} GB",
                            rec.options.passes, f"{err_pct:.2f}"), widths), flush=True)


def _drift_run(scene_data, *, chunk, overlap, rot, scale, loop_closure, seed=0, systematic=False):
    """(ATE %, end-start gap %, loops accepted, loop candidates) of one run."""
    from da3_plugins.core import conventions as conv
    from da3_plugins.core.geometry import umeyama
    from da3_plugins.core.pipeline import reconstruct
    from da3_plugins.core.synthetic.predictor import GroundTruthPredictor
    from da3_plugins.core.synthetic.trajectories import ate

    scene, ext, ks, images, depth = scene_data
    pred = GroundTruthPredictor(ext, ks, depth, rotation_deg=rot, scale=scale, seed=seed, systematic=systematic)
    rec = reconstruct(pred, images, max_views_per_pass=chunk, chunk_overlap=overlap, process_res=images.shape[2],
                      loop_closure=loop_closure)
    c_est, c_true = conv.camera_centers(rec.extrinsics), conv.camera_centers(ext)
    length = float(np.linalg.norm(np.diff(c_true, axis=0), axis=1).sum())
    r, t, s = umeyama(c_est, c_true, allow_collinear=True)  # the open path is a straight line
    aligned = s * c_est @ r.T + t
    gap = float(np.linalg.norm(aligned[-1] - aligned[0])) / length * 100
    loops = [j for j in rec.options.joints if j["kind"] == "loop"]
    return ate(rec.extrinsics, ext), gap, sum(j["used"] for j in loops), len(loops)


def drift_table(n, chunk, overlap, rot, scale, seeds):
    from da3_plugins.core import conventions as conv
    from da3_plugins.core.synthetic.trajectories import make_long_scene

    print(f"\nDrift: ground-truth predictor, {rot} deg rotation and {scale * 100:.0f}% scale error per chunk, "
          f"{n} views, chunks of {chunk} overlapping by {overlap}; mean over seeds {list(seeds)}. Without a loop "
          "the pose graph is a chain and its solution is the sequential one.")
    widths = (10, 10, 30, 8, 16, 9)
    print(_header(("path", "errors", "joining", "ATE %", "end-start gap %", "loops"), widths))
    for traj in ("loop", "open"):
        data = make_long_scene(traj, n=n)
        c = conv.camera_centers(data[1])
        true_gap = np.linalg.norm(c[-1] - c[0]) / np.linalg.norm(np.diff(c, axis=0), axis=1).sum() * 100
        for systematic in (True, False):
            for label, lc in (("sequential", "off"), ("pose graph + loop closure", "auto")):
                res = [_drift_run(data, chunk=chunk, overlap=overlap, rot=rot, scale=scale, loop_closure=lc, seed=s,
                                  systematic=systematic) for s in seeds]
                a = np.mean([r[0] for r in res])
                g = np.mean([r[1] for r in res])
                loops = f"{sum(r[2] for r in res)}/{sum(r[3] for r in res)}"
                print(_row((traj, "steady" if systematic else "random", label, f"{a:.3f}", f"{g:.2f} ({true_gap:.2f})",
                            loops), widths), flush=True)


def overlap_table(n, chunk, overlaps, rot, scale, seeds):
    from da3_plugins.core.synthetic.trajectories import make_long_scene

    data = make_long_scene("loop", n=n)
    print(f"\nOverlap sweep (loop, chunks of {chunk}, random errors, loop closure off / auto): ATE % and passes")
    widths = (8, 10, 10, 8)
    print(_header(("overlap", "ATE off", "ATE auto", "passes"), widths))
    for ov in overlaps:
        off = [_drift_run(data, chunk=chunk, overlap=ov, rot=rot, scale=scale, loop_closure="off", seed=s)[0]
               for s in seeds]
        on = [_drift_run(data, chunk=chunk, overlap=ov, rot=rot, scale=scale, loop_closure="auto", seed=s)[0]
              for s in seeds]
        passes = len(range(0, n - chunk, chunk - ov)) + 1
        print(_row((ov, f"{np.mean(off):.3f}", f"{np.mean(on):.3f}", passes), widths), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", action="store_true", help="only the scale table")
    ap.add_argument("--drift", action="store_true", help="only the drift tables")
    ap.add_argument("--views", default="100,500,2000")
    ap.add_argument("--res", default="112,504")
    ap.add_argument("--photo-size", default="126x168",
                    help="HxW of the rendered photos (378x504 takes about 0.6 s a view to render)")
    ap.add_argument("--max-views", type=int, default=None, help="--max-views for da3p (default: from memory)")
    ap.add_argument("--rot", type=float, default=0.5)
    ap.add_argument("--scale-error", type=float, default=0.02)
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    both = not (args.scale or args.drift)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.drift or both:
        drift_table(240, 24, 8, args.rot, args.scale_error, seeds)
        overlap_table(240, 24, (2, 4, 6, 8, 12, 16), args.rot, args.scale_error, seeds)
    if args.scale or both:
        hw = tuple(int(v) for v in args.photo_size.split("x"))
        scale_table([int(v) for v in args.views.split(",")], [int(r) for r in args.res.split(",")], hw, args.max_views)


if __name__ == "__main__":
    main()
