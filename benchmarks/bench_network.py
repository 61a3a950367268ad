"""Time our DA3 network against the official one on the same random weights.

Both networks live in one process and run alternately on the same input, so machine
noise hits both alike.  For each preset and view count it prints the median forward time
and the peak extra resident memory of a forward (the kernel's high-water mark, reset
before each call).

    python benchmarks/bench_network.py                       # small + base, 4 and 16 views
    python benchmarks/bench_network.py --presets da3-small --views 4 --repeats 5

Both sides run in float32 without autocast (the official API would use fp16 autocast on
CPU, which is emulated and several times slower).  The other columns are our network at the
other precisions (``core/precision.py``), timed in the same interleaved rounds: ``bf16``
(the backbone under bfloat16 autocast, the official GPU policy), ``int8`` (the backbone's Linear
layers dynamically quantised, CPU only) with its difference to our fp32 output (median relative
depth difference, largest pairwise camera rotation difference), and which of them ``auto``
picks on this machine.  This is a benchmark, not a test: it asserts nothing.

A second table times the whole API from photo files (preprocessing, network, postprocessing):
the official ``DepthAnything3.inference`` as shipped (its own autocast: bf16 where CUDA supports
it, else fp16, which on a CPU is emulated) against our ``model.reconstruct`` in ``auto`` (the
precision policy) and in exact fp32, on the same weights and the same PNG files of the
benchmark's size (``--no-api`` skips it).

``--device`` (default ``auto``: CUDA when present, else the CPU) moves both networks; on a GPU
the times are synchronised, memory is the allocator's peak, and int8 (CPU only) is skipped.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def _release_free_memory() -> None:
    """Return freed heap to the OS so that RSS counts live memory only (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def measure(fn, device: "torch.device | None" = None):
    """(seconds, peak extra bytes) of one call.

    On the CPU the kernel's resident high-water mark is reset just before the call (Linux
    /proc/self/clear_refs), after freed heap has been handed back, so the peak is the
    call's own and does not depend on what ran before it in this process.  On CUDA: the
    synchronised time and the caching allocator's peak above what was allocated before.
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) - base
    _release_free_memory()
    base = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return seconds, (_status_kb("VmHWM") - base) * 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["da3-small", "da3-base"])
    parser.add_argument("--views", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--size", nargs=2, type=int, default=[378, 504], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16-backbone column")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 columns")
    parser.add_argument("--no-api", action="store_true", help="skip the end-to-end API table")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from oracle import official_network, save_hub_folder

    from da3_plugins.core import load_model
    from da3_plugins.core.precision import decide_auto, int8_backbone, set_precision

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    auto = decide_auto(device)
    print(f"device {device}; auto there: {auto.precision} ({auto.reason})")
    variants = [v for v, skip in (("bf16", args.no_bf16), ("int8", args.no_int8 or device.type != "cpu")) if not skip]
    h, w = args.size
    rows, api_rows = [], []
    for preset in args.presets:
        official = official_network(preset).to(device)
        with tempfile.TemporaryDirectory() as tmp:
            folder = save_hub_folder(official, Path(tmp), preset)
            ours = load_model(folder, device=device, dtype="fp32")
            ours_auto = None if args.no_api else load_model(folder, device=device, dtype="auto")
        if "int8" in variants:
            int8_backbone(ours.net)  # quantised once, outside the timing
        for n in args.views:
            x = torch.randn(1, n, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
            outputs = {}

            def run_official():
                with torch.inference_mode(), torch.autocast("cpu", enabled=False):
                    official(x)

            def run_ours(precision="fp32"):
                set_precision(ours, precision)
                with torch.inference_mode():
                    outputs[precision] = ours.net(x)

            run_official(), run_ours()  # warm-up
            for v in variants:
                run_ours(v)
            t_off, t_ours = [], []
            t_var = {v: [] for v in variants}
            m_off = m_ours = 0
            for _ in range(args.repeats):  # interleave so drift hits all alike
                t, m = measure(run_official, device)
                t_off.append(t)
                m_off = max(m_off, m)
                t, m = measure(run_ours, device)
                t_ours.append(t)
                m_ours = max(m_ours, m)
                for v in variants:
                    t_var[v].append(measure(lambda: run_ours(v), device)[0])
            extra = {v: statistics.median(t) for v, t in t_var.items()}
            for v in variants:
                extra[f"{v} diff"] = _difference(outputs[v], outputs["fp32"])
            rows.append((preset, n, statistics.median(t_off), m_off, statistics.median(t_ours), m_ours, extra,
                         auto.precision))
            print_row(rows[-1], header=len(rows) == 1, size=(h, w))
            if ours_auto is not None:
                api_rows.append((preset, n, *time_api(official, ours, ours_auto, n, (h, w), args.repeats, device)))
        del official, ours, ours_auto
    if api_rows:
        print(f"\nThe whole API from {w}x{h} PNG files (preprocessing, network, postprocessing), median of "
              f"{args.repeats}:\n")
        print("| API, preset | views | official API as shipped | ours reconstruct, auto | ours reconstruct, fp32 | "
              "official API / ours auto |")
        print("|---|---|---|---|---|---|")
        for preset, n, t_api, t_auto, t_fp32, api_dtype, auto_name in api_rows:
            print(f"| whole API, {preset} | {n} | {t_api:.2f} s ({api_dtype} autocast) | {t_auto:.2f} s ({auto_name}) | "
                  f"{t_fp32:.2f} s | {t_api / t_auto:.2f}x |", flush=True)


def time_api(official, ours, ours_auto, n, size, repeats, device):
    """(official API s, ours auto s, ours fp32 s, the official autocast dtype, auto's name)."""
    import warnings

    import numpy as np
    from PIL import Image

    from da3_plugins.core.precision import model_precision

    h, w = size
    from oracle import official_api

    api = official_api(official)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n):
            small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
            paths.append(str(Path(tmp) / f"view_{i:03d}.png"))
            Image.fromarray(small).resize((w, h), Image.BILINEAR).save(paths[-1])
        kw = {"process_res": max(h, w)}

        def run_api():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                api.inference(paths, **kw)

        runs = {"api": run_api, "auto": lambda: ours_auto.reconstruct(paths, progress=None, **kw),
                "fp32": lambda: ours.reconstruct(paths, progress=None, **kw)}
        for fn in runs.values():  # warm-up
            fn()
        times = {k: [] for k in runs}
        for _ in range(repeats):
            for k, fn in runs.items():
                times[k].append(measure(fn, device)[0])
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return (*(statistics.median(times[k]) for k in ("api", "auto", "fp32")), "bf16" if bf16 else "fp16",
            model_precision(ours_auto))


def _difference(test, ref):
    """(median relative depth difference, largest pairwise camera rotation difference in degrees)."""
    from da3_plugins.core.geometry import relative_pose_errors

    depth = float(((test.depth - ref.depth).abs() / ref.depth.abs()).median())
    if test.extrinsics is None:
        return depth, float("nan")
    r_err, _ = relative_pose_errors(test.extrinsics[0].double().numpy(), ref.extrinsics[0].double().numpy())
    return depth, float(r_err.max())


def print_row(row, header: bool, size) -> None:
    if header:
        print(f"| preset | views x {size[0]}x{size[1]} | official fp32 | ours fp32 | speed-up | "
              "official peak mem | ours peak mem | ours bf16 | ours int8 | int8 / fp32 | "
              "depth diff to fp32, bf16 / int8 (median rel) | rotation diff, bf16 / int8 (max) | auto |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    preset, n, t_off, m_off, t_ours, m_ours, extra, auto = row
    gb = 1024**3

    def secs(key):
        return f"{extra[key]:.2f} s" if key in extra else "-"

    ratio = f"{extra['int8'] / t_ours:.2f}" if "int8" in extra else "-"
    nan = (float("nan"), float("nan"))
    (d_bf, r_bf), (d_i8, r_i8) = extra.get("bf16 diff", nan), extra.get("int8 diff", nan)
    print(f"| {preset} | {n} | {t_off:.2f} s | {t_ours:.2f} s | {t_off / t_ours:.2f}x | "
          f"{m_off / gb:.2f} GB | {m_ours / gb:.2f} GB | {secs('bf16')} | {secs('int8')} | {ratio} | "
          f"{d_bf:.1e} / {d_i8:.1e} | {r_bf:.2f} / {r_i8:.2f} deg | {auto} |", flush=True)


if __name__ == "__main__":
    main()
