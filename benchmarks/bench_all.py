"""``make bench``: every benchmark of the project in one table.

Runs each benchmark script in its own process with a short setting, reads the Markdown table(s)
it prints, and prints one table: the area, the case (the first column of the script's row) and
its measurements (the other columns).  On a CUDA machine the network and the rasteriser run on
the GPU where their scripts do; nothing here asserts anything.

    .venv/bin/python benchmarks/bench_all.py              # everything, short settings
    .venv/bin/python benchmarks/bench_all.py --only network,exports
    .venv/bin/python benchmarks/bench_all.py --full       # each script's own (longer) defaults

Each script also runs alone with more options (see its docstring).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

HERE = Path(__file__).resolve().parent

# area, script, short arguments
BENCHES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("network", "bench_network.py", ("--presets", "da3-small", "--views", "4", "--repeats", "3")),
    ("rasteriser", "bench_render.py", ("--gaussians", "100000", "--sizes", "504x378", "--repeat", "2")),
    ("long inputs", "bench_long.py", ("--scale", "--views", "100", "--res", "112")),
    ("exports", "bench_exports.py", ("--views", "20", "--repeat", "1", "--no-memory")),
    ("TSDF fusion (Open3D)", "bench_open3d.py", ("--views", "20")),
    ("Blender import", "bench_blender.py", ("--views", "20")),
)


def tables(text: str) -> List[Tuple[str, List[str], List[List[str]]]]:
    """The Markdown tables in a script's output: (title, header, rows); the title is the last
    line of text before the table ("" if none)."""
    out, header, rows, title = [], None, [], ""
    for line in text.splitlines() + [""]:
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            elif not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
            continue
        if header is not None:
            out.append((title, header, rows))
            header, rows = None, []
        if line:
            title = line
    return out


def _measured(cell: str) -> bool:
    """A cell worth printing: not empty, not "nan" (a measurement the short setting skips)."""
    return bool(cell) and cell.replace("(", "").replace(")", "").split() != ["nan", "nan"] and cell != "nan"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated areas (as in the table's first column)")
    ap.add_argument("--full", action="store_true", help="each script's own defaults instead of the short settings")
    args = ap.parse_args()
    only = {a.strip() for a in args.only.split(",") if a.strip()}
    rows = []
    for area, script, short in BENCHES:
        if only and not any(o in area for o in only):
            continue
        cmd = [sys.executable, str(HERE / script), *(() if args.full else short)]
        print(f"running {area}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        found = tables(run.stdout)
        if run.returncode != 0 or not found:
            rows.append((area, script, f"failed (exit {run.returncode}): {(run.stderr.strip().splitlines() or [''])[-1]}"))
            continue
        cases = [cells[0] for _, _, body in found for cells in body]
        clash = len(set(cases)) < len(cases)
        for title, header, body in found:
            # tables with the same cases (forward, forward + backward): the table's title in front
            label = f"{title.split('(')[0].strip().rstrip(':')}: " if clash and title else ""
            for cells in body:
                measures = "; ".join(f"{h}: {c}" for h, c in zip(header[1:], cells[1:]) if _measured(c))
                rows.append((area, label + cells[0], measures))
        print(f"  {seconds:.0f} s", file=sys.stderr, flush=True)
    print("| area | case | measurements |")
    print("|---|---|---|")
    for area, case, measures in rows:
        print(f"| {area} | {case} | {measures} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
