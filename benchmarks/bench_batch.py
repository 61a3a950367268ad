"""Throughput of ``da3p batch``: scenes per minute, serial in one process against Ray with
local workers, on the same scenes in one run (issue 16).

    python benchmarks/bench_batch.py [--scenes 12] [--views 6] [--process-res 336] [--workers 2]

The scenes are copies of the bundled demo photos; the model is the embedded one. The Ray run
starts its own local instance (the start is timed separately: it is paid once per batch).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only

from da3_plugins.batch import BatchSettings, find_jobs, run_batch  # noqa: E402
from da3_plugins.core.options import ReconstructOptions  # noqa: E402
from da3_plugins.ray_backend import ModelLoader, WorkerSpec  # noqa: E402
from da3_plugins.runner import Progress  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "demo"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=12)
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--process-res", type=int, default=336)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--export", default="scene,ply")
    args = ap.parse_args()
    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    views = sorted(DEMO.glob("view_*.png"))
    for s in range(args.scenes):
        folder = work / "root" / f"scene{s:03d}"
        folder.mkdir(parents=True)
        for v in range(args.views):
            shutil.copy(views[(s + v) % len(views)], folder / f"{v:03d}.png")
    jobs = find_jobs(str(work / "root"))
    opts = ReconstructOptions(process_res=args.process_res)
    rows = []

    def timed(out, ray=None):
        settings = BatchSettings(output=str(work / out), model="embedded", exports=tuple(args.export.split(",")),
                                 options=opts)
        t0 = time.perf_counter()
        records = run_batch(jobs, settings, Progress(), load_model=ModelLoader("cpu"), ray=ray)
        seconds = time.perf_counter() - t0
        assert all(r.status == "ok" for r in records), [r.error for r in records if r.status != "ok"]
        return seconds

    serial = timed("serial")
    rows.append((f"serial, one process ({torch.get_num_threads()} torch threads)", serial, serial))
    import ray

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t0
    try:
        ray_s = timed("ray", ray={"address": None, "spec": WorkerSpec(workers=args.workers)})
    finally:
        ray.shutdown()
    rows.append((f"Ray, {args.workers} local workers x 1 CPU", ray_s, ray_s + start))
    print(f"{args.scenes} scenes x {args.views} views at {args.process_res} px, embedded model, exports {args.export}, "
          f"{os.cpu_count()} cores; Ray start {start:.1f} s")
    print("| run | seconds | scenes per minute | with the Ray start |")
    print("|---|---:|---:|---:|")
    for label, s, with_start in rows:
        print(f"| {label} | {s:.1f} | {60 * args.scenes / s:.1f} | {60 * args.scenes / with_start:.1f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
