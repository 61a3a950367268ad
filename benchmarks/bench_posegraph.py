"""Sim(3) pose-graph solvers compared on the same graphs, and the robust joint's Huber threshold.

    .venv/bin/python benchmarks/bench_posegraph.py            # solvers + loop losses + install sizes
    .venv/bin/python benchmarks/bench_posegraph.py --robust   # the robust_sim3 threshold experiment
    .venv/bin/python benchmarks/bench_posegraph.py --all      # also the slow solvers on the largest graph

Graphs: a ring of ``n`` chunk frames (radius 10, each frame with its own orientation and a random
scale), consecutive overlap edges with a per-edge error, and one loop edge from the last node to
the first.  Two error models, both ~0.5 deg rotation, ~2% scale and 1% translation per edge:
``random`` (zero-mean, a random direction per edge) and ``drift`` (the same rotation axis and scale
bias on every edge, as a monocular model's drift).  Every edge has weight ``1/0.01^2``.  "bad"
adds a grossly wrong loop edge (30 deg, x1.5 scale, half the radius) from the last node to node
``n // 3``.  ATE: RMS of the node positions after a Sim(3) fit to the truth, in % of the
trajectory length.  Every solver starts from the chain and gets the loop loss of
:func:`core.posegraph.solve_pose_graph` (Cauchy of scale ``LOOP_LOSS_SCALE`` on the weighted
7-residual of each loop edge).  The drift model runs on the smallest ring only: over 100 edges a
2% scale bias compounds to x7, which no residual test tells from a wrong loop.

Solvers: pyceres (what the core uses; Ceres LM with sparse normal Cholesky, numeric Jacobians
of a batched numpy residual), gtsam (``BetweenFactorSimilarity3``, LM), scipy
(``least_squares`` trf with a sparse Jacobian pattern, finite differences, lsmr steps) and
pypose (``pp.optim.LM`` with dense autograd Jacobians, Cholesky).  A library that is not
installed is skipped.  Prints tables only; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from da3_plugins.core import posegraph as pg  # noqa: E402
from da3_plugins.core.geometry import robust_sim3, umeyama_sim3  # noqa: E402
from da3_plugins.core.posegraph import Edge, Sim3, chain_poses, so3_exp  # noqa: E402

SIGMA = 0.01


# --------------------------------------------------------------------------- graphs


def ring(n: int, model: str, seed: int = 0) -> Tuple[List[Sim3], List[Edge], Edge]:
    """True poses, the overlap edges and the (good) loop edge of a noisy ring."""
    rng = np.random.default_rng(seed)
    truth = []
    for k in range(n):
        a = 2 * np.pi * k / n
        r = so3_exp(np.array([0.0, 0.0, a]) + rng.normal(size=3) * 0.05)
        truth.append(Sim3(r, [10 * np.cos(a), 10 * np.sin(a), 0.3 * rng.normal()], np.exp(0.5 * rng.normal())))
    bias_axis = rng.normal(size=3)
    bias_axis /= np.linalg.norm(bias_axis)

    def noisy(rel: Sim3) -> Sim3:
        if model == "drift":
            axis = bias_axis + 0.2 * rng.normal(size=3)
            scale = np.log(1.02) + 0.004 * rng.normal()
        else:
            axis = rng.normal(size=3)
            scale = 0.02 * rng.normal()
        axis /= np.linalg.norm(axis)
        step = np.linalg.norm(rel.t) / rel.s  # the edge's length in node j's units
        err = Sim3(so3_exp(np.deg2rad(0.5) * axis), 0.01 * step * rng.normal(size=3) / np.sqrt(3), np.exp(scale))
        return rel.compose(err)

    w = 1.0 / SIGMA**2
    edges = [Edge(k, k + 1, noisy(truth[k].inverse().compose(truth[k + 1])), w) for k in range(n - 1)]
    loop = Edge(n - 1, 0, noisy(truth[n - 1].inverse().compose(truth[0])), w, "loop")
    return truth, edges, loop


def bad_loop(truth: List[Sim3]) -> Edge:
    n = len(truth)
    rel = truth[n - 1].inverse().compose(truth[n // 3])
    shift = np.array([5.0, 0.0, 0.0]) / truth[n // 3].s  # half the radius, in node n//3's units
    wrong = Sim3(so3_exp(np.deg2rad(30.0) * np.array([0.6, 0.8, 0.0])), shift, 1.5)
    return Edge(n - 1, n // 3, rel.compose(wrong), 1.0 / SIGMA**2, "loop")


def ate_percent(poses: List[Sim3], truth: List[Sim3]) -> float:
    a = np.array([p.t for p in poses])
    b = np.array([p.t for p in truth])
    r, t, s = umeyama_sim3(a, b)
    length = float(np.linalg.norm(np.diff(b, axis=0), axis=1).sum())
    return 100.0 * float(np.sqrt(np.mean(np.sum((s * a @ r.T + t - b) ** 2, axis=1)))) / length


# --------------------------------------------------------------------------- solvers
# each: (n, edges, init, loop_loss in {"none", "huber", "cauchy"}, max_iterations) -> (poses, iterations)


def solve_pyceres(n, edges, init, loss, iters, scale=pg.LOOP_LOSS_SCALE):
    return pg._solve_ceres(n, edges, [], init, loss, iters, scale)


def solve_gtsam(n, edges, init, loss, iters, scale=pg.LOOP_LOSS_SCALE):
    import gtsam

    def to_g(p):
        return gtsam.Similarity3(gtsam.Rot3(p.r), p.t / p.s, p.s)

    graph = gtsam.NonlinearFactorGraph()
    values = gtsam.Values()
    for k, p in enumerate(init):
        values.insert(k, to_g(p))
    graph.add(gtsam.NonlinearEqualitySimilarity3(0, to_g(init[0])))
    for e in edges:
        noise = gtsam.noiseModel.Isotropic.Sigma(7, 1.0 / np.sqrt(e.weight))
        if e.kind == "loop" and loss != "none":
            est = (gtsam.noiseModel.mEstimator.Cauchy if loss == "cauchy" else gtsam.noiseModel.mEstimator.Huber)
            noise = gtsam.noiseModel.Robust.Create(est.Create(scale), noise)
        graph.add(gtsam.BetweenFactorSimilarity3(e.i, e.j, to_g(e.rel), noise))
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(iters)
    opt = gtsam.LevenbergMarquardtOptimizer(graph, values, params)
    out = opt.optimize()
    poses = []
    for k in range(n):
        g = out.atSimilarity3(k)
        poses.append(Sim3(g.rotation().matrix(), g.translation() * g.scale(), g.scale()))
    return poses, int(opt.iterations())


def solve_scipy(n, edges, init, loss, iters, scale=pg.LOOP_LOSS_SCALE):
    from scipy.optimize import least_squares
    from scipy.sparse import lil_matrix

    ii = np.array([e.i for e in edges])
    jj = np.array([e.j for e in edges])
    r0, t0, s0 = pg._stack(init)
    rel = pg._stack([e.rel for e in edges])
    sw = np.sqrt([e.weight for e in edges])[:, None]

    def residuals(x):  # every edge in one vectorised call; nodes are right perturbations of init
        d = np.concatenate([np.zeros(7), x]).reshape(n, 7)
        r = r0 @ so3_exp(d[:, :3])
        t = s0[:, None] * np.einsum("kab,kb->ka", r0, d[:, 3:6]) + t0
        s = s0 * np.exp(d[:, 6])
        return (sw * pg._errors(r[ii], t[ii], s[ii], r[jj], t[jj], s[jj], *rel)).ravel()

    pattern = lil_matrix((7 * len(edges), 7 * (n - 1)), dtype=np.int8)
    for e_idx, (i, j) in enumerate(zip(ii, jj)):
        for k in (i, j):
            if k > 0:
                pattern[7 * e_idx:7 * e_idx + 7, 7 * (k - 1):7 * k] = 1
    robust = np.array([e.kind == "loop" and loss != "none" for e in edges])
    c2 = scale**2

    def rho(z):  # scipy's loss protocol on squared residuals, per edge (7 components)
        out = np.stack([z, np.ones_like(z), np.zeros_like(z)])
        ze = z.reshape(-1, 7)[robust]
        tot = ze.sum(1, keepdims=True)
        blk = out.reshape(3, -1, 7)
        share = ze / np.maximum(tot, 1e-300)
        blk[0, robust] = pg._rho(tot, loss, scale) * share
        if loss == "cauchy":
            blk[1, robust] = 1.0 / (1.0 + tot / c2)
        else:
            blk[1, robust] = np.minimum(1.0, scale / np.sqrt(np.maximum(tot, 1e-300)))
        return blk.reshape(3, -1)

    res = least_squares(residuals, np.zeros(7 * (n - 1)), jac_sparsity=pattern.tocsr(), method="trf",
                        loss=rho if robust.any() else "linear", x_scale="jac", max_nfev=iters)
    d = np.concatenate([np.zeros(7), res.x]).reshape(n, 7)
    return [p.compose(Sim3(so3_exp(x[:3]), x[3:6], float(np.exp(x[6])))) for p, x in zip(init, d)], int(res.nfev)


def solve_pypose(n, edges, init, loss, iters, scale=pg.LOOP_LOSS_SCALE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pypose as pp
    import torch
    from torch import nn

    def to_p(poses):
        q = []
        for p in poses:
            w = pg.so3_log(p.r)
            th = np.linalg.norm(w)
            axis = w / th if th > 0 else np.zeros(3)
            q.append(np.concatenate([p.t, np.sin(th / 2) * axis, [np.cos(th / 2)], [p.s]]))
        return pp.Sim3(torch.tensor(np.stack(q)))

    groups = [[e for e in edges if not (loss != "none" and e.kind == "loop")],
              [e for e in edges if loss != "none" and e.kind == "loop"]]
    groups = [g for g in groups if g]
    data = [(torch.tensor([e.i for e in g]), torch.tensor([e.j for e in g]), to_p([e.rel for e in g]),
             torch.tensor([np.sqrt(e.weight) for e in g])[:, None]) for g in groups]

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("root", to_p(init[:1]))
            self.nodes = pp.Parameter(to_p(init[1:]))

        def forward(self, _input):
            nodes = torch.cat([self.root, self.nodes], 0)
            out = tuple(w * (rel.Inv() @ nodes[i].Inv() @ nodes[j]).Log().tensor() for i, j, rel, w in data)
            return out if len(out) > 1 else out[0]

    graph = Graph().double()
    kernel = None
    if len(groups) > 1:
        k = pp.optim.kernel.Cauchy(delta=scale) if loss == "cauchy" else pp.optim.kernel.Huber(delta=scale)
        kernel = [None, k]
    opt = pp.optim.LM(graph, solver=pp.optim.solver.Cholesky(), kernel=kernel, vectorize=True)
    sched = pp.optim.scheduler.StopOnPlateau(opt, steps=iters, patience=3, decreasing=1e-8, verbose=False)
    sched.optimize(input=None)
    with torch.no_grad():
        m = torch.cat([graph.root, graph.nodes], 0).matrix().numpy()
    return [Sim3.from_matrix(x) for x in m], int(sched.steps)


SOLVERS: Dict[str, Tuple[str, Callable]] = {
    "pyceres": ("pyceres", solve_pyceres), "gtsam": ("gtsam", solve_gtsam),
    "scipy": ("scipy.optimize", solve_scipy), "pypose": ("pypose", solve_pypose),
}
SLOW = {"scipy": 100, "pypose": 100}  # largest graph these run on without --all


def run(solver: Callable, n: int, edges: List[Edge], schedule=(("cauchy",),), iters: int = 100):
    """Solves from the chain, once per stage of ``schedule`` ((loss, *scale) tuples)."""
    start = time.perf_counter()
    poses, total = chain_poses(n, edges), 0
    for loss, *scale in schedule:
        poses, its = solver(n, edges, poses, loss, iters, *scale)
        total += its
    return poses, total, time.perf_counter() - start


def installed(module: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
        return True
    except ImportError:
        return False


# --------------------------------------------------------------------------- tables


def solver_table(sizes: List[int], everything: bool, names: List[str]) -> None:
    print("## Solvers (ring + one good loop; 'bad': plus a grossly wrong loop edge; ATE in % of the length)\n")
    print("| solver | nodes | noise | seconds | iterations | ATE chain | ATE solved | ATE solved, bad loop |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        module, solver = SOLVERS[name]
        if not installed(module):
            print(f"| {name} | - | - | not installed | | | | |")
            continue
        for n in sizes:
            if not everything and n > SLOW.get(name, n):
                print(f"| {name} | {n} | | skipped (slow; --all) | | | | |")
                continue
            for model in (("random", "drift") if n == min(sizes) else ("random",)):
                truth, edges, loop = ring(n, model)
                poses, its, secs = run(solver, n, edges + [loop])
                bad, _, _ = run(solver, n, edges + [loop, bad_loop(truth)])
                chain = ate_percent(chain_poses(n, edges), truth)
                print(f"| {name} | {n} | {model} | {secs:.3f} | {its} | {chain:.3f} | "
                      f"{ate_percent(poses, truth):.3f} | {ate_percent(bad, truth):.3f} |")
    print()


def loss_table(seeds: int = 16) -> None:
    print(f"## Loop losses (pyceres; ring of 15; median over {seeds} seeds of the ATE ratio solved / chain,"
          " and of the largest node shift the bad loop causes, in % of the radius)\n")
    print("| loop loss | random | random + bad loop | shift | drift | drift + bad loop | shift |")
    print("|---|---|---|---|---|---|---|")
    schedules = {"none": (("none",),), "huber 5": (("huber", 5.0),), "cauchy 3": (("cauchy", 3.0),),
                 "cauchy 4": (("cauchy", 4.0),), "**cauchy 5**": (("cauchy", 5.0),), "cauchy 8": (("cauchy", 8.0),),
                 "huber 5, then cauchy 5": (("huber", 5.0), ("cauchy", 5.0))}
    for label, schedule in schedules.items():
        cells = []
        for model in ("random", "drift"):
            good, bad, shift = [], [], []
            for seed in range(seeds):
                truth, edges, loop = ring(15, model, seed)
                chain = ate_percent(chain_poses(15, edges), truth)
                p_good, _, _ = run(solve_pyceres, 15, edges + [loop], schedule)
                p_bad, _, _ = run(solve_pyceres, 15, edges + [loop, bad_loop(truth)], schedule)
                good.append(ate_percent(p_good, truth) / chain)
                bad.append(ate_percent(p_bad, truth) / chain)
                shift.append(10.0 * max(np.linalg.norm(a.t - b.t) for a, b in zip(p_good, p_bad)))  # % of radius 10
            cells += [f"{np.median(good):.2f}", f"{np.median(bad):.2f}", f"{np.median(shift):.2f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print()


def _dist_size(dist: str) -> Tuple[float, List[str]]:
    d = md.distribution(dist)
    size = 0
    for f in d.files or []:
        try:
            size += os.path.getsize(d.locate_file(f))
        except OSError:
            pass
    reqs = [r.split(";")[0].strip() for r in (d.requires or []) if "extra ==" not in r]
    return size / 2**20, reqs


def install_table() -> None:
    print("## Installs (this environment)\n")
    print("| library | version | installed MB | declared dependencies | import seconds |")
    print("|---|---|---|---|---|")
    for name, (module, _) in SOLVERS.items():
        try:
            version = md.version(name)
            mb, reqs = _dist_size(name)
        except md.PackageNotFoundError:
            print(f"| {name} | not installed | | | |")
            continue
        start = time.perf_counter()
        # a fresh interpreter: the import cost a user pays (torch included for pypose)
        code = f"import warnings; warnings.simplefilter('ignore'); import {module}"
        os.system(f"{sys.executable} -c \"{code}\"")
        print(f"| {name} | {version} | {mb:.0f} | {', '.join(reqs) or '-'} | {time.perf_counter() - start:.2f} |")
    print()


def robust_table(seeds: int = 10) -> None:
    """The Huber threshold of robust_sim3 as a fraction of the scene scale (2,000 points)."""
    from da3_plugins.core.geometry import robust as rb

    print("## robust_sim3: Huber threshold (fraction of the scene scale) vs error\n")
    print("Median over seeds of the RMS error of the fitted map on the clean points, in % of the scene"
          " scale; noise is the per-axis Gaussian noise in % of the scene scale.\n")
    fractions = (0.01, 0.02, 0.05, 0.1, 0.2)
    print("| noise | outliers | plain Umeyama | " + " | ".join(f"delta {f}" for f in fractions) + " |")
    print("|---|---|---|" + "---|" * len(fractions))
    saved = rb.DEFAULT_DELTA_FRACTION
    try:
        for noise in (0.005, 0.015, 0.04):
            for outliers in (0.0, 0.3, 0.45):
                plain, robust = [], {f: [] for f in fractions}
                for seed in range(seeds):
                    rng = np.random.default_rng(seed)
                    src = rng.normal(size=(2000, 3)) * [2.0, 1.0, 0.5]
                    r, s, t = so3_exp(rng.normal(size=3)), 1.7, rng.normal(size=3)
                    clean = s * src @ r.T + t
                    scale = rb.scene_scale(clean)
                    dst = clean + rng.normal(size=src.shape) * noise * scale
                    bad = rng.choice(2000, int(outliers * 2000), replace=False)
                    dst[bad] += (rng.normal(size=(len(bad), 3)) * 1.5 + rng.normal(size=3)) * scale
                    r0, t0, s0 = umeyama_sim3(src, dst)
                    plain.append(np.sqrt(np.mean(np.sum((s0 * src @ r0.T + t0 - clean) ** 2, 1))) / scale)
                    for f in fractions:
                        rb.DEFAULT_DELTA_FRACTION = f
                        fit = robust_sim3(src, dst)
                        robust[f].append(np.sqrt(np.mean(np.sum((fit.apply(src) - clean) ** 2, 1))) / scale)
                print(f"| {100 * noise:.1f}% | {100 * outliers:.0f}% | {100 * np.median(plain):.3f} | "
                      + " | ".join(f"{100 * np.median(robust[f]):.3f}" for f in fractions) + " |")
    finally:
        rb.DEFAULT_DELTA_FRACTION = saved
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robust", action="store_true", help="only the robust_sim3 threshold experiment")
    parser.add_argument("--all", action="store_true", help="run the slow solvers on every size")
    parser.add_argument("--sizes", default="10,100,400", help="ring sizes (comma separated)")
    parser.add_argument("--solvers", default=",".join(SOLVERS), help="solvers to compare (comma separated)")
    args = parser.parse_args()
    if args.robust:
        robust_table()
        return
    solver_table([int(s) for s in args.sizes.split(",")], args.all, args.solvers.split(","))
    loss_table()
    install_table()


if __name__ == "__main__":
    main()
