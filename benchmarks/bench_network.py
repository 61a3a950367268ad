"""Time our DA3 network against the official one on the same random weights.

Both networks live in one process and run alternately on the same input, so machine
noise hits both alike.  For each preset and view count it prints the median forward time
and the peak extra resident memory of a forward (the kernel's high-water mark, reset
before each call).

    python benchmarks/bench_network.py                       # small + base, 4 and 16 views
    python benchmarks/bench_network.py --presets da3-small --views 4 --repeats 5

Both sides run in float32 without autocast (the official API would use fp16 autocast on
CPU, which is emulated and several times slower).  The ``ours bf16`` column is our network
with the backbone under bfloat16 autocast (the official GPU precision policy).
This is a benchmark, not a test: it asserts nothing.
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


def measure(fn):
    """(seconds, peak extra resident bytes) of one call.

    The kernel's resident high-water mark is reset just before the call (Linux
    /proc/self/clear_refs), after freed heap has been handed back, so the peak is the
    call's own and does not depend on what ran before it in this process.
    """
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from oracle import official_network, save_hub_folder

    from da3_plugins.core import load_model

    h, w = args.size
    rows = []
    for preset in args.presets:
        official = official_network(preset)
        with tempfile.TemporaryDirectory() as tmp:
            ours = load_model(save_hub_folder(official, Path(tmp), preset), device="cpu")
        for n in args.views:
            x = torch.randn(1, n, 3, h, w, generator=torch.Generator().manual_seed(0))

            def run_official():
                with torch.inference_mode(), torch.autocast("cpu", enabled=False):
                    official(x)

            def run_ours(dtype=torch.float32):
                ours.net.backbone_dtype = dtype
                with torch.inference_mode():
                    ours.net(x)

            run_official(), run_ours()  # warm-up
            t_off, t_ours = [], []
            m_off = m_ours = 0
            for _ in range(args.repeats):  # interleave so drift hits both alike
                t, m = measure(run_official)
                t_off.append(t)
                m_off = max(m_off, m)
                t, m = measure(run_ours)
                t_ours.append(t)
                m_ours = max(m_ours, m)
            bf16 = None
            if not args.no_bf16:
                run_ours(torch.bfloat16)
                bf16 = statistics.median(measure(lambda: run_ours(torch.bfloat16))[0] for _ in range(args.repeats))
            rows.append((preset, n, statistics.median(t_off), m_off, statistics.median(t_ours), m_ours, bf16))
            print_row(rows[-1], header=len(rows) == 1, size=(h, w))
        del official, ours


def print_row(row, header: bool, size) -> None:
    if header:
        print(f"| preset | views x {size[0]}x{size[1]} | official fp32 | ours fp32 | speed-up | "
              "official peak mem | ours peak mem | ours bf16 backbone |")
        print("|---|---|---|---|---|---|---|---|")
    preset, n, t_off, m_off, t_ours, m_ours, bf16 = row
    gb = 1024**3
    bf = f"{bf16:.2f} s" if bf16 is not None else "-"
    print(f"| {preset} | {n} | {t_off:.2f} s | {t_ours:.2f} s | {t_off / t_ours:.2f}x | "
          f"{m_off / gb:.2f} GB | {m_ours / gb:.2f} GB | {bf} |", flush=True)


if __name__ == "__main__":
    main()
