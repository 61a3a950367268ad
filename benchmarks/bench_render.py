"""Time the pure-PyTorch rasteriser (core/render.py) against the one before issue 17 part 3
(``core/render.py`` at commit 8865414, read from git: every 16 x 16 tile against every Gaussian);
prints a table.

    .venv/bin/python benchmarks/bench_render.py [--sizes 504x378,1008x756] [--gaussians 100000,500000,2000000]

**Gaussians**: the bundled demo photos reconstructed with the embedded model (``da3p reconstruct
--model embedded``, or ``--scene scene.npz``), every point a round Gaussian as the ``da3-data``
dataparser seeds ``da3-splat``: about a pixel wide where it was seen (wider when thinned, by the
square root of the thinning), opacity from the confidence, its pixel's colour as degree-0 SH.
Above the scene's point count (1.14 M) the points repeat, jittered by their own size. Rendered
from the first input camera, its K scaled to each size.

**Forward** is ``rasterize`` under ``torch.no_grad()`` (previews, videos); **forward+backward**
is what a ``da3-splat`` step does on the CPU: leaf parameters (means, quats, log-scales, logit
opacities, SH), ``exp`` / ``sigmoid`` / SH colours inside the graph, an L1 loss on the clamped
RGB, ``backward()``.  Each (implementation, size, Gaussians, pass) runs in its own process:
after a small untimed warm-up render, best of ``--repeat`` (the earlier version: of 2, or one
run where it takes over 10 s); peak memory = the process's peak RSS growth during the runs
(on CUDA, ``--device``: the allocator's peak, times synchronised).
The earlier version is skipped where its time or memory, extrapolated from its first run of
that pass (linearly in Gaussians x tiles: an upper bound), would pass ``--old-seconds`` /
``--old-gb``; the table says so.  Timings move a lot with other work on the machine: the table
prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "da3_plugins" / "data" / "demo"


# --------------------------------------------------------------------------- Gaussians


def demo_scene(path: "str | None", work: Path) -> Path:
    if path:
        return Path(path)
    out = work / "demo"
    args = [sys.executable, "-m", "da3_plugins.cli", "reconstruct", str(DEMO), "-o", str(out), "--model", "embedded",
            "--export", "scene", "--progress", "none", "--overwrite"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return next(p for p in out.iterdir() if p.name.startswith("scene"))


def seed_gaussians(scene: Path, count: int, seed: int = 0) -> dict:
    """``count`` round Gaussians from the scene's points, as the da3-data dataparser seeds them."""
    import numpy as np
    import torch

    from da3_plugins.core.reconstruction import Reconstruction
    from da3_plugins.core.seeds import rgb_to_sh_dc, seed_scales

    rec = Reconstruction.load(scene)
    cloud = rec.points(conf_threshold=0)
    pts, colors, conf, view = cloud.positions.astype(np.float64), cloud.colors, cloud.confidence, cloud.view
    total = len(pts)
    rng = np.random.default_rng(seed)
    if count <= total:
        pick = np.sort(rng.choice(total, count, replace=False))
    else:
        pick = np.concatenate([np.arange(total)] * (count // total)
                              + [np.sort(rng.choice(total, count % total, replace=False))])
    scale = seed_scales(pts[pick], view[pick], rec.extrinsics, rec.intrinsics, min(1.0, count / total))
    means = pts[pick]
    if count > total:  # the copies, jittered within their own footprint
        means = means + rng.normal(size=means.shape) * scale[:, None]
    opacity = np.clip(1.0 - 1.0 / np.maximum(conf[pick], 1.0), 0.05, 0.95)

    def t(a):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)

    quats = torch.zeros(count, 4)
    quats[:, 0] = 1.0
    vm = np.eye(4)
    vm[:3] = rec.extrinsics[0][:3]
    return {"means": t(means), "quats": quats, "scales": t(np.repeat(scale[:, None], 3, 1)), "opacities": t(opacity),
            "sh": t(rgb_to_sh_dc(colors[pick])[:, :, None]), "viewmat": t(vm), "k": t(rec.intrinsics[0]),
            "size": (rec.width, rec.height)}


# --------------------------------------------------------------------------- one measurement (own process)

BEFORE = "8865414"  # the last commit with the every-tile-against-every-Gaussian rasteriser


def earlier_renderer():
    """``core/render.py`` as of :data:`BEFORE`, read with ``git show`` and imported as a module
    whose relative imports resolve against today's ``da3_plugins.core`` (the helpers it uses are
    unchanged since)."""
    import importlib.util

    try:
        text = subprocess.run(["git", "-C", str(HERE.parent), "show", f"{BEFORE}:core/render.py"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"the earlier rasteriser needs the git history ({exc}); use --no-old") from None
    folder = Path(tempfile.mkdtemp(prefix="render_before_"))
    (folder / "render_before.py").write_text(text.replace("from .", "from da3_plugins.core."))
    spec = importlib.util.spec_from_file_location("render_before", folder / "render_before.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module



def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["impl"] == "old":
        impl = earlier_renderer()
    else:
        from da3_plugins.core import render as impl
    device = torch.device(spec.get("device", "cpu"))
    g = {n: v.to(device) if torch.is_tensor(v) else v for n, v in torch.load(spec["gaussians"], weights_only=True).items()}
    w, h = spec["width"], spec["height"]
    k = g["k"].clone()
    k[0] *= w / g["size"][0]
    k[1] *= h / g["size"][1]
    bg = torch.zeros(3, device=device)
    cuda = device.type == "cuda"

    def render(g, k, w, h):
        if spec["pass"] == "fwd":
            with torch.no_grad():
                out = impl.rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"], g["viewmat"], k,
                                     w, h, background=bg)
            grads = None
        else:  # as da3-splat's get_outputs + loss.backward() on the CPU
            p = {"means": g["means"], "quats": g["quats"], "log_scales": g["scales"].log(),
                 "logit_opacities": torch.logit(g["opacities"]), "sh": g["sh"]}
            p = {n: v.clone().requires_grad_() for n, v in p.items()}
            out = impl.rasterize(p["means"], p["quats"], torch.exp(p["log_scales"]),
                                 torch.sigmoid(p["logit_opacities"]), p["sh"], g["viewmat"], k, w, h, background=bg)
            (out.rgb.clamp(0.0, 1.0) - 0.5).abs().mean().backward()
            grads = {n: v.grad for n, v in p.items()}
        return out, grads

    # warm-up (thread pools, first-call initialisation): a small render, not timed
    small = k.clone()
    small[:2] *= 0.25
    render({n: v[:2000] if n in ("means", "quats", "scales", "opacities", "sh") else v for n, v in g.items()},
           small, w // 4, h // 4)
    if cuda:  # the allocator's peak above what is held before the runs
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _reset_peak_rss()
    times = []
    for _ in range(spec["repeat"]):
        start = time.perf_counter()
        out, grads = render(g, k, w, h)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak_mb = ((torch.cuda.max_memory_allocated(device) if cuda else _peak_rss()) - base) / 2**20
    if spec.get("save"):
        torch.save({"rgb": out.rgb.detach().cpu(), "alpha": out.alpha.detach().cpu(),
                    "grads": None if grads is None else {n: v.cpu() for n, v in grads.items()}}, spec["save"])
    print(json.dumps({"seconds": min(times), "peak_mb": peak_mb}), flush=True)


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the peak RSS (VmHWM) to the current RSS and return it (bytes); ru_maxrss where not Linux."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    try:
        return _status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(spec: dict, timeout: float) -> dict:
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:60]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- table


def compare(old_file: Path, new_file: Path, kind: str) -> str:
    import torch

    a, b = torch.load(old_file, weights_only=True), torch.load(new_file, weights_only=True)
    if kind == "fwd":
        return f"{(a['rgb'] - b['rgb']).abs().mean():.1e} / {(a['alpha'] - b['alpha']).abs().mean():.1e}"
    ga = torch.cat([v.reshape(-1) for v in a["grads"].values()]).double()
    gb = torch.cat([v.reshape(-1) for v in b["grads"].values()]).double()
    cos = float(ga @ gb / (ga.norm() * gb.norm()).clamp(min=1e-30))
    return f"{cos:.5f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--scene", help="a scene.npz to take the Gaussians from (default: the demo photos, embedded model)")
    p.add_argument("--gaussians", default="100000,500000,2000000")
    p.add_argument("--sizes", default="504x378,1008x756")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--old-seconds", type=float, default=90.0, help="skip the earlier version beyond this (estimated)")
    p.add_argument("--old-gb", type=float, default=6.0, help="skip the earlier version beyond this much memory")
    p.add_argument("--no-old", action="store_true", help="time only the current rasteriser")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else cpu), cpu, cuda, ...")
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    counts = [int(float(x)) for x in args.gaussians.split(",")]
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    load0 = os.getloadavg()
    rows = {"fwd": [], "fwdbwd": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = demo_scene(args.scene, work)
        files = {}
        for n in counts:
            files[n] = work / f"g{n}.pt"
            torch.save(seed_gaussians(scene, n), files[n])
        ref = {}  # the earlier version's first run per pass: (gaussians x tiles, seconds, MB)
        for kind in ("fwd", "fwdbwd"):
            for (w, h) in sizes:
                tiles = -(-w // 16) * -(-h // 16)
                for n in counts:
                    res = {}
                    for impl in ("old", "new"):
                        spec = {"impl": impl, "pass": kind, "gaussians": str(files[n]), "width": w, "height": h,
                                "threads": args.threads, "repeat": args.repeat, "device": device,
                                "save": str(work / f"{impl}-{kind}-{n}-{w}.pt")}
                        if impl == "old":
                            if args.no_old:
                                res[impl] = {"skip": "not run"}
                                continue
                            spec["repeat"] = 2
                            if kind in ref:
                                work0, sec0, mb0 = ref[kind]
                                f = n * tiles / work0
                                if sec0 * f > args.old_seconds or mb0 * f > args.old_gb * 1024:
                                    res[impl] = {"skip": f"skipped (est. {sec0 * f:.0f} s, {mb0 * f / 1024:.1f} GB)"}
                                    continue
                                spec["repeat"] = 2 if sec0 * f < 10 else 1
                        res[impl] = measure(spec, timeout=max(600.0, 3 * args.old_seconds))
                        if impl == "old" and kind not in ref and "seconds" in res[impl]:
                            ref[kind] = (n * tiles, res[impl]["seconds"], max(res[impl]["peak_mb"], 1.0))
                    diff = ""
                    if all("seconds" in res[i] for i in ("old", "new")):
                        diff = compare(work / f"old-{kind}-{n}-{w}.pt", work / f"new-{kind}-{n}-{w}.pt", kind)
                    for i in ("old", "new"):
                        Path(work / f"{i}-{kind}-{n}-{w}.pt").unlink(missing_ok=True)
                    rows[kind].append((n, w, h, res, diff))
                    print(f"  {kind} {n:>9,} {w}x{h}: " + "  ".join(
                        f"{i} {r.get('seconds', r.get('skip', r.get('error')))}" for i, r in res.items()), flush=True)
    load1 = os.getloadavg()

    def cell(r, key, fmt, first=True):
        return fmt.format(r[key]) if key in r else r.get("skip", r.get("error", "")) if first else ""

    print(f"\nRasteriser on {device}, {args.threads} threads, {os.cpu_count()} cores; load average {load0[0]:.2f} at the start, "
          f"{load1[0]:.2f} at the end; best of {args.repeat} (the earlier version: best of 2 where it takes under "
          f"10 s, else one run)\n")
    for kind, title, last in (("fwd", "Forward (no_grad)", "mean abs diff RGB / alpha"),
                              ("fwdbwd", "Forward + backward (a da3-splat step's rendering and loss)",
                               "gradient cosine")):
        print(f"{title}\n")
        print(f"| Gaussians | image | earlier s | now s | speed-up | earlier peak MB | now peak MB | {last} |")
        print("|---:|---|---:|---:|---:|---:|---:|---|")
        for n, w, h, res, diff in rows[kind]:
            old, new = res["old"], res["new"]
            speed = f"{old['seconds'] / new['seconds']:.1f}x" if "seconds" in old and "seconds" in new else ""
            print(f"| {n:,} | {w}x{h} | {cell(old, 'seconds', '{:.3f}')} | {cell(new, 'seconds', '{:.3f}')} | "
                  f"{speed} | "
                  f"{cell(old, 'peak_mb', '{:.0f}', False)} | {cell(new, 'peak_mb', '{:.0f}')} | {diff} |")
        print()


if __name__ == "__main__":
    main()
