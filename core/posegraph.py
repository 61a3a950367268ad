"""A Sim(3) pose graph: every chunk-to-chunk constraint of a long reconstruction, solved together.

Nodes are the frames of the chunks (node ``k``'s pose maps its frame into the world, ``X_world =
T_k(X_k)``).  An :class:`Edge` ``(i, j, rel)`` says ``X_i = rel(X_j)``, i.e. ideally ``T_j = T_i
∘ rel``; overlap edges join consecutive chunks, loop edges join a chunk with an earlier one it sees
again.  A :class:`Prior` pins a node's pose in the world (views with known poses).

The residual of an edge is the logarithm of its error ``E = rel^-1 ∘ T_i^-1 ∘ T_j`` (identity when
the edge holds), in the decoupled sim(3) coordinates ``[rotation vector (rad), translation (in
node j's units), log scale]`` (7 numbers; to first order the sim(3) logarithm), times
``sqrt(weight)``; a prior's residual is that of ``P^-1 ∘ T_node``.

``weight`` is an information (inverse variance) scale: with ``weight = 1/sigma^2``, ``sigma`` the
expected error of the edge in those units, the weighted residual of a good edge is a few units.
Loop edges (``robust_loops``) get a Cauchy loss of scale :data:`LOOP_LOSS_SCALE` (5) on the norm
of their weighted 7-vector: a loop whose weighted residual stays far above 5 pulls with a force
that fades as ``25 / residual``.  With the default weight 1 (sigma = 1 rad, 1 unit) every loop
counts as good.  The scale was chosen by ``benchmarks/bench_posegraph.py`` (rings of 15 nodes,
weights 1/0.01^2 while the true errors are ~1-2 sigma, a wrong loop of 30 deg / x1.5 / half the
radius added; median of 16 seeds):

    loss       ATE / chain, drifting ring   shift from the wrong loop, % of the radius
    none       0.05                         31
    Huber 5    0.05                         14
    Cauchy 3   0.21 (the loop half open)    0.3 (zero-mean errors), 2.0 (drift)
    Cauchy 5   0.05                         0.9, 0.7
    Cauchy 8   0.05                         2.4, 2.4

A residual test cannot tell a wrong loop from a good one whose accumulated drift is larger than
the wrong loop's error (a 2% scale drift per edge over 100 edges is x7): loop candidates must be
checked geometrically before they become edges.

The solver is Ceres (``pyceres``: Levenberg-Marquardt, sparse normal Cholesky), chosen by
``benchmarks/bench_posegraph.py`` over gtsam, scipy's ``least_squares`` and pypose, which all
reach the same optimum: gtsam is 10-80x faster (0.05 s against 4 s for 400 nodes) but installs
110 MB, declares a runtime dependency on pytest>=9 and has no wheel for Windows or Python 3.10 /
3.13 in the registry we install from; pyceres is 13 MB and needs only numpy; scipy (136 MB) and
pypose (dense Jacobians) are 5-40x slower.  Each node's parameters are a right perturbation of
its initial pose, ``T_k = T0_k ∘ (exp(w), tau, exp(sigma))``, so the scale is estimated in log
space and stays positive; the Jacobians are central differences of a batched numpy residual
(Ceres' automatic differentiation is C++ only).  pyceres is imported inside the solve.

numpy only at import time.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

LOOP_LOSS_SCALE = 5.0
"""Cauchy scale of loop edges, on the norm of the weighted 7-residual (see the module docstring)."""

EDGE_KINDS = ("overlap", "loop")

# --------------------------------------------------------------------------- SO(3) helpers (batched)


def _hat(w: np.ndarray) -> np.ndarray:
    k = np.zeros(w.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -w[..., 2], w[..., 1], -w[..., 0]
    k[..., 1, 0], k[..., 2, 0], k[..., 2, 1] = w[..., 2], -w[..., 1], w[..., 0]
    return k


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64)
    th2 = (w * w).sum(-1)
    th = np.sqrt(th2)
    small = th < 1e-4
    ths = np.where(small, 1.0, th)
    a = np.where(small, 1.0 - th2 / 6.0, np.sin(ths) / ths)[..., None, None]
    b = np.where(small, 0.5 - th2 / 24.0, (1.0 - np.cos(ths)) / (ths * ths))[..., None, None]
    # K^2 = w w^T - |w|^2 I
    out = a * _hat(w) + b * (w[..., :, None] * w[..., None, :])
    out += (1.0 - b * th2[..., None, None]) * np.eye(3)
    return out


def so3_log(r: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi]."""
    r = np.asarray(r, dtype=np.float64)
    v = 0.5 * np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.linalg.norm(v, axis=-1)
    cos = 0.5 * (np.trace(r, axis1=-2, axis2=-1) - 1.0)
    th = np.arctan2(sin, cos)
    small = sin < 1e-8
    factor = np.where(small, 1.0 + th**2 / 6.0, th / np.where(small, 1.0, sin))
    out = v * factor[..., None]
    near_pi = (sin < 1e-4) & (cos < 0)
    if np.any(near_pi):  # angle ~ pi: the axis from the symmetric part (1 - cos) a a^T, signed by v
        rp = r[near_pi]
        minus_cos = 0.5 * (1.0 - np.trace(rp, axis1=-2, axis2=-1))
        s = 0.5 * (rp + np.swapaxes(rp, -1, -2)) + minus_cos[..., None, None] * np.eye(3)
        col = np.argmax(np.diagonal(s, axis1=-2, axis2=-1), -1)
        axis = s[np.arange(len(s)), :, col]
        axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
        axis *= np.where((axis * v[near_pi]).sum(-1) < 0, -1.0, 1.0)[..., None]
        out[near_pi] = axis * th[near_pi][..., None]
    return out


# --------------------------------------------------------------------------- Sim(3)


@dataclass(frozen=True, eq=False)
class Sim3:
    """A similarity ``X -> s R X + t`` (float64)."""

    r: np.ndarray
    t: np.ndarray
    s: float = 1.0

    def __post_init__(self):
        r = np.array(self.r, dtype=np.float64).reshape(3, 3)
        t = np.array(self.t, dtype=np.float64).reshape(3)
        s = float(self.s)
        if not (s > 0 and np.isfinite(s)):
            raise ValueError(f"Sim3: expected a positive finite scale, got {self.s}")
        r.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(self, "r", r)
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "s", s)

    @classmethod
    def identity(cls) -> "Sim3":
        return cls(np.eye(3), np.zeros(3), 1.0)

    def compose(self, other: "Sim3") -> "Sim3":
        """``self ∘ other``: X -> self(other(X))."""
        return Sim3(self.r @ other.r, self.s * self.r @ other.t + self.t, self.s * other.s)

    def inverse(self) -> "Sim3":
        rt = self.r.T
        return Sim3(rt, -(rt @ self.t) / self.s, 1.0 / self.s)

    def apply(self, points) -> np.ndarray:
        """(..., 3) points -> s R X + t."""
        return self.s * np.asarray(points, dtype=np.float64) @ self.r.T + self.t

    def as_matrix(self) -> np.ndarray:
        """4x4 ``[[sR, t], [0, 1]]``."""
        m = np.eye(4)
        m[:3, :3] = self.s * self.r
        m[:3, 3] = self.t
        return m

    @classmethod
    def from_matrix(cls, m) -> "Sim3":
        """From a (3|4, 4) ``[[sR, t], ...]`` matrix (sR may be slightly off; it is re-orthonormalised)."""
        m = np.asarray(m, dtype=np.float64)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"Sim3.from_matrix: expected a (4, 4) or (3, 4) matrix, got {m.shape}")
        a = m[:3, :3]
        det = np.linalg.det(a)
        if not det > 0:
            raise ValueError("Sim3.from_matrix: the 3x3 block is not a positive scaled rotation")
        s = float(np.cbrt(det))
        u, _, vh = np.linalg.svd(a / s)
        return cls(u @ vh, m[:3, 3], s)

    def log(self) -> np.ndarray:
        """The decoupled sim(3) coordinates ``[rotation vector, t, log s]`` (7,) of the residuals."""
        return np.concatenate([so3_log(self.r), self.t, [np.log(self.s)]])

    def __repr__(self) -> str:
        return f"Sim3(rotvec={np.round(so3_log(self.r), 6).tolist()}, t={np.round(self.t, 6).tolist()}, s={self.s:.6g})"


@dataclass(frozen=True)
class Edge:
    """``X_i = rel(X_j)``: ``rel`` maps node j's frame into node i's frame."""

    i: int
    j: int
    rel: Sim3
    weight: float = 1.0
    kind: str = "overlap"

    def __post_init__(self):
        if self.kind not in EDGE_KINDS:
            raise ValueError(f"Edge.kind: expected one of {EDGE_KINDS}, got {self.kind!r}")
        if not (float(self.weight) > 0 and np.isfinite(self.weight)):
            raise ValueError(f"Edge.weight: expected a positive finite number, got {self.weight}")
        if self.i == self.j:
            raise ValueError(f"Edge: i and j must differ, got {self.i} twice")


@dataclass(frozen=True)
class Prior:
    """A measured pose of a node: node frame -> world."""

    node: int
    pose: Sim3
    weight: float = 1.0

    def __post_init__(self):
        if not (float(self.weight) > 0 and np.isfinite(self.weight)):
            raise ValueError(f"Prior.weight: expected a positive finite number, got {self.weight}")


@dataclass
class GraphSolution:
    """The solved poses (node frame -> world) and how the solve went.

    ``edge_residuals[e]`` is the norm of edge ``e``'s unweighted residual ``[rotation vector (rad),
    translation (node j's units), log scale]`` at the solution (0 when the edge holds exactly).
    Costs are ``0.5 * sum rho(|weighted residual|^2)`` over edges and priors (rho the identity,
    or the Cauchy loss on loop edges).
    """

    poses: List[Sim3]
    initial_cost: float
    final_cost: float
    iterations: int
    seconds: float
    solver: str
    edge_residuals: List[float] = field(default_factory=list)


# --------------------------------------------------------------------------- initial guess


def _check(n: int, edges: Sequence[Edge], priors: Sequence[Prior] = ()) -> None:
    if n < 1:
        raise ValueError(f"pose graph: expected at least one node, got {n}")
    for e in edges:
        if not (0 <= e.i < n and 0 <= e.j < n):
            raise ValueError(f"pose graph: edge ({e.i}, {e.j}) names a node outside 0..{n - 1}")
    for p in priors:
        if not 0 <= p.node < n:
            raise ValueError(f"pose graph: prior on node {p.node} outside 0..{n - 1}")


def chain_poses(n: int, edges: Iterable[Edge]) -> List[Sim3]:
    """Sequential joining: ``T_0 = I``, ``T_{k+1} = T_k ∘ rel(k, k+1)`` (or the inverse of a
    ``(k+1, k)`` edge; of several, the one with the largest weight, overlap edges first).

    Raises:
        ValueError: some consecutive pair has no edge.
    """
    edges = list(edges)
    _check(n, edges)
    step: dict = {}
    for e in edges:
        if abs(e.i - e.j) != 1:
            continue
        k = min(e.i, e.j)
        rel = e.rel if e.i == k else e.rel.inverse()
        key = (e.kind == "overlap", e.weight)
        if k not in step or key > step[k][0]:
            step[k] = (key, rel)
    poses = [Sim3.identity()]
    for k in range(n - 1):
        if k not in step:
            raise ValueError(f"chain_poses: no edge joins nodes {k} and {k + 1}")
        poses.append(poses[-1].compose(step[k][1]))
    return poses


def _initial_guess(n: int, edges: Sequence[Edge], priors: Sequence[Prior]) -> List[Sim3]:
    """The chain when every consecutive pair is joined, else a breadth-first spanning tree from node
    0 (overlap edges before loop edges); then moved into the frame of the strongest prior."""
    try:
        poses: List[Optional[Sim3]] = list(chain_poses(n, edges))
    except ValueError:
        adj: List[List[Tuple[int, Sim3]]] = [[] for _ in range(n)]
        for e in sorted(edges, key=lambda e: (e.kind != "overlap", -e.weight)):
            adj[e.i].append((e.j, e.rel))
            adj[e.j].append((e.i, e.rel.inverse()))
        poses = [None] * n
        poses[0] = Sim3.identity()
        todo = deque([0])
        while todo:
            a = todo.popleft()
            for b, rel in adj[a]:
                if poses[b] is None:
                    poses[b] = poses[a].compose(rel)
                    todo.append(b)
        missing = [k for k in range(n) if poses[k] is None]
        if missing:
            raise ValueError(f"pose graph: nodes {missing[:5]} are not connected to node 0")
    if priors:
        best = max(priors, key=lambda p: p.weight)
        g = best.pose.compose(poses[best.node].inverse())
        poses = [g.compose(p) for p in poses]
    return poses  # type: ignore[return-value]


# --------------------------------------------------------------------------- solving

_FD_STEP = 1e-6  # central differences of the residuals (Ceres' numeric differentiation, in numpy)


def _stack(poses: Sequence[Sim3]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not poses:
        return np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0)
    return np.stack([p.r for p in poses]), np.stack([p.t for p in poses]), np.array([p.s for p in poses])


def _errors(ri, ti, si, rj, tj, sj, rr, tr, sr) -> np.ndarray:
    """Batched ``log(rel^-1 ∘ T_i^-1 ∘ T_j)`` -> (E, 7) ``[rotvec, t, log s]``."""
    rit = np.swapaxes(ri, -1, -2)
    rrt = np.swapaxes(rr, -1, -2)
    t_a = np.einsum("eab,eb->ea", rit, tj - ti) / si[:, None]
    r_e = rrt @ (rit @ rj)
    t_e = np.einsum("eab,eb->ea", rrt, t_a - tr) / sr[:, None]
    return np.concatenate([so3_log(r_e), t_e, np.log(sj / (si * sr))[:, None]], -1)


def _edge_errors(poses: Sequence[Sim3], edges: Sequence[Edge]) -> np.ndarray:
    """(E, 7) unweighted residuals of ``edges`` at ``poses``."""
    if not edges:
        return np.zeros((0, 7))
    r, t, s = _stack(poses)
    i = np.array([e.i for e in edges])
    j = np.array([e.j for e in edges])
    return _errors(r[i], t[i], s[i], r[j], t[j], s[j], *_stack([e.rel for e in edges]))


def _prior_errors(poses: Sequence[Sim3], priors: Sequence[Prior]) -> np.ndarray:
    if not priors:
        return np.zeros((0, 7))
    r, t, s = _stack(poses)
    k = np.array([p.node for p in priors])
    eye = np.broadcast_to(np.eye(3), (len(k), 3, 3))
    return _errors(*_stack([p.pose for p in priors]), r[k], t[k], s[k], eye, np.zeros((len(k), 3)), np.ones(len(k)))


def _rho(z: np.ndarray, loss: str, scale: float = LOOP_LOSS_SCALE) -> np.ndarray:
    """Ceres' losses of the squared norm ``z``: identity ("none"), "huber" or "cauchy" of ``scale``."""
    c2 = scale**2
    if loss == "cauchy":
        return c2 * np.log1p(z / c2)
    if loss == "huber":
        return np.where(z <= c2, z, 2.0 * scale * np.sqrt(z) - c2)
    return z


def graph_cost(poses: Sequence[Sim3], edges: Sequence[Edge], priors: Sequence[Prior] = (),
               loop_loss: str = "cauchy") -> float:
    """``0.5 * sum rho(|sqrt(weight) residual|^2)`` over edges (``rho`` = ``loop_loss`` on loop
    edges, the identity elsewhere) and priors: the objective of :func:`solve_pose_graph`."""
    ze = np.array([e.weight for e in edges]) * (_edge_errors(poses, edges) ** 2).sum(1)
    loop = np.array([e.kind == "loop" for e in edges], dtype=bool)
    zp = np.array([p.weight for p in priors]) * (_prior_errors(poses, priors) ** 2).sum(1)
    return 0.5 * float(_rho(ze[loop], loop_loss).sum() + ze[~loop].sum() + zp.sum())


_COST_TYPE = None


def _cost_type():
    """A ``pyceres.CostFunction`` of one 7-residual block on 1 or 2 parameter blocks of 7, whose
    Jacobians are central differences of a batched numpy residual function."""
    global _COST_TYPE
    if _COST_TYPE is None:
        import pyceres

        class BatchedNumericCost(pyceres.CostFunction):
            def __init__(self, residual, blocks: int):
                super().__init__()
                self.set_num_residuals(7)
                self.set_parameter_block_sizes([7] * blocks)
                self.residual, self.blocks = residual, blocks
                k = 7 * blocks
                self.steps = np.concatenate([np.zeros((1, k)), _FD_STEP * np.eye(k), -_FD_STEP * np.eye(k)])

            def Evaluate(self, parameters, residuals, jacobians):  # noqa: N802 (Ceres' name)
                x = np.concatenate([np.asarray(p, dtype=np.float64) for p in parameters[:self.blocks]])
                if jacobians is None:
                    residuals[:] = self.residual(x[None])[0]
                    return True
                k = 7 * self.blocks
                values = self.residual(x + self.steps)
                residuals[:] = values[0]
                jac = (values[1:k + 1] - values[k + 1:]) / (2.0 * _FD_STEP)  # (k, 7): d residual / d x_c
                for b in range(self.blocks):
                    if jacobians[b] is not None:
                        jacobians[b][:] = jac[7 * b:7 * b + 7].T.ravel()
                return True

        _COST_TYPE = BatchedNumericCost
    return _COST_TYPE


def _edge_residual(e: Edge, pi: Sim3, pj: Sim3):
    """Batched weighted residual of ``e`` at ``T_i = pi ∘ d_i``, ``T_j = pj ∘ d_j`` (x = [d_i, d_j]):
    ``_errors`` with the constant parts of the two initial poses and ``rel`` folded in."""
    sw = np.sqrt(e.weight)
    c = pi.r.T @ pj.r
    d0 = pi.r.T @ (pj.t - pi.t)
    rel_rt, rel_t, rel_s = e.rel.r.T, e.rel.t, e.rel.s
    log_s0 = np.log(pj.s / (pi.s * rel_s))

    def residual(x: np.ndarray) -> np.ndarray:
        ex = so3_exp(x.reshape(-1, 7)[:, :3]).reshape(len(x), 2, 3, 3)
        ei_t = np.swapaxes(ex[:, 0], -1, -2)
        r_e = rel_rt @ ei_t @ c @ ex[:, 1]
        v = d0 + pj.s * x[:, 10:13] @ c.T - pi.s * x[:, 3:6]
        t_a = np.einsum("bkl,bl->bk", ei_t, v) / (pi.s * np.exp(x[:, 6]))[:, None]
        t_e = (t_a - rel_t) @ e.rel.r / rel_s
        return sw * np.concatenate([so3_log(r_e), t_e, (log_s0 + x[:, 13] - x[:, 6])[:, None]], -1)
    return residual


def _prior_residual(p: Prior, pk: Sim3):
    """Batched weighted residual of ``p`` at ``T_k = pk ∘ d``: ``log(P^-1 ∘ T_k)``."""
    sw = np.sqrt(p.weight)
    c = p.pose.r.T @ pk.r
    d0 = p.pose.r.T @ (pk.t - p.pose.t) / p.pose.s
    log_s0 = np.log(pk.s / p.pose.s)

    def residual(x: np.ndarray) -> np.ndarray:
        r_e = c @ so3_exp(x[:, :3])
        t_e = d0 + (pk.s / p.pose.s) * x[:, 3:6] @ c.T
        return sw * np.concatenate([so3_log(r_e), t_e, (log_s0 + x[:, 6])[:, None]], -1)
    return residual


def _solve_ceres(n: int, edges: Sequence[Edge], priors: Sequence[Prior], init: List[Sim3], loop_loss: str,
                 max_iterations: int, loss_scale: float = LOOP_LOSS_SCALE) -> Tuple[List[Sim3], int]:
    """One Ceres solve (Levenberg-Marquardt, sparse normal Cholesky) from ``init``; node 0 is held
    when there is no prior.  Each node's parameters are a right perturbation of its ``init``."""
    import pyceres

    cost_type = _cost_type()
    params = [np.zeros(7) for _ in range(n)]
    problem = pyceres.Problem()
    keep = []  # cost and loss objects must outlive the solve
    for k in range(n):
        problem.add_parameter_block(params[k], 7)
    for e in edges:
        cost = cost_type(_edge_residual(e, init[e.i], init[e.j]), 2)
        loss = None
        if e.kind == "loop" and loop_loss == "cauchy":
            loss = pyceres.CauchyLoss(loss_scale)
        elif e.kind == "loop" and loop_loss == "huber":
            loss = pyceres.HuberLoss(loss_scale)
        keep.append((cost, loss))
        problem.add_residual_block(cost, loss, [params[e.i], params[e.j]])
    for p in priors:
        cost = cost_type(_prior_residual(p, init[p.node]), 1)
        keep.append((cost, None))
        problem.add_residual_block(cost, None, [params[p.node]])
    if not priors:
        problem.set_parameter_block_constant(params[0])
    options = pyceres.SolverOptions()
    options.linear_solver_type = pyceres.LinearSolverType.SPARSE_NORMAL_CHOLESKY
    options.max_num_iterations = max(1, int(max_iterations))
    options.function_tolerance = 1e-12
    options.parameter_tolerance = 1e-12
    options.num_threads = 1
    options.minimizer_progress_to_stdout = False
    options.logging_type = pyceres.LoggingType.SILENT
    summary = pyceres.SolverSummary()
    pyceres.solve(options, problem, summary)
    poses = [init[k].compose(Sim3(so3_exp(params[k][:3]), params[k][3:6], float(np.exp(params[k][6]))))
             for k in range(n)]
    return poses, int(summary.num_successful_steps + summary.num_unsuccessful_steps)


def solve_pose_graph(n: int, edges: Sequence[Edge], priors: Sequence[Prior] = (), *, robust_loops: bool = True,
                     max_iterations: int = 100) -> GraphSolution:
    """Least-squares Sim(3) poses (node frame -> world) of ``n`` nodes joined by ``edges``.

    Without priors node 0 stays the identity (the gauge); with priors every node is free and the
    priors fix the frame, scale included.  The initial guess is :func:`chain_poses` (a spanning
    tree when a consecutive pair is not joined), moved onto the strongest prior.  Loop edges get
    a Cauchy loss of scale :data:`LOOP_LOSS_SCALE` when ``robust_loops``.

    Raises:
        ValueError: a node out of range, or a node not connected to node 0.
    """
    edges, priors = list(edges), list(priors)
    _check(n, edges, priors)
    start = time.perf_counter()
    init = _initial_guess(n, edges, priors)
    loss = "cauchy" if robust_loops else "none"
    poses, iterations = init, 0
    if edges or priors:
        poses, iterations = _solve_ceres(n, edges, priors, init, loss, max_iterations)
    return GraphSolution(
        poses=poses, initial_cost=graph_cost(init, edges, priors, loss),
        final_cost=graph_cost(poses, edges, priors, loss), iterations=iterations, seconds=time.perf_counter() - start,
        solver="pyceres (Ceres Levenberg-Marquardt, sparse normal Cholesky)",
        edge_residuals=[float(v) for v in np.linalg.norm(_edge_errors(poses, edges), axis=1)])


__all__ = ["EDGE_KINDS", "Edge", "GraphSolution", "LOOP_LOSS_SCALE", "Prior", "Sim3", "chain_poses", "graph_cost",
           "solve_pose_graph", "so3_exp", "so3_log"]
