"""Robust chunk joints (core.geometry.robust) and the Sim(3) pose graph (core.posegraph)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from da3_plugins.core.errors import UserInputError
from da3_plugins.core.geometry import Sim3Fit, robust_sim3, umeyama_sim3
from da3_plugins.core.posegraph import (Edge, GraphSolution, Prior, Sim3, chain_poses, so3_exp, so3_log,
                                        solve_pose_graph)

# --------------------------------------------------------------------------- robust_sim3


def _points(seed=0, n=2000):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 3)) * [2.0, 1.0, 0.5]
    r, t, s = so3_exp(rng.normal(size=3)), rng.normal(size=3), 1.7
    return rng, src, r, t, s


def _map_error(r, t, s, src, clean):
    return float(np.sqrt(np.mean(np.sum((s * src @ r.T + t - clean) ** 2, 1))))


@pytest.mark.parametrize("with_scale", [True, False])
def test_robust_sim3_recovers_clean_data_exactly(with_scale):
    _, src, r, t, s = _points()
    s = s if with_scale else 1.0
    fit = robust_sim3(src, s * src @ r.T + t, with_scale=with_scale)
    assert isinstance(fit, Sim3Fit)
    np.testing.assert_allclose(fit.r, r, atol=1e-10)
    np.testing.assert_allclose(fit.t, t, atol=1e-10)
    assert fit.s == pytest.approx(s, abs=1e-10)
    assert fit.residual < 1e-10 and fit.inlier_ratio == 1.0 and fit.points == len(src)


def test_robust_sim3_is_ten_times_closer_than_umeyama_with_30_percent_outliers():
    rng, src, r, t, s = _points(1)
    clean = s * src @ r.T + t
    dst = clean + rng.normal(size=src.shape) * 0.01
    bad = rng.choice(len(src), int(0.3 * len(src)), replace=False)
    dst[bad] += rng.normal(size=(len(bad), 3)) * 5.0 + rng.normal(size=3) * 3.0
    fit = robust_sim3(src, dst)
    plain = _map_error(*umeyama_sim3(src, dst), src, clean)
    robust = _map_error(fit.r, fit.t, fit.s, src, clean)
    assert robust * 10 <= plain, (robust, plain)
    assert 0.6 < fit.inlier_ratio < 0.8
    assert fit.iterations >= 1


def test_robust_sim3_se3_mode_keeps_unit_scale():
    rng, src, r, t, _ = _points(2)
    fit = robust_sim3(src, 1.5 * src @ r.T + t + rng.normal(size=src.shape) * 0.01, with_scale=False)
    assert fit.s == 1.0
    np.testing.assert_allclose(fit.r, r, atol=1e-2)


def test_robust_sim3_honours_weights():
    # two halves that disagree: the weights decide which one the fit follows
    _, src, r, t, s = _points(3, 400)
    dst = s * src @ r.T + t
    other = Sim3(so3_exp([0.3, 0.0, 0.0]), [1.0, 0.0, 0.0], 0.8).compose(Sim3(r, t, s))
    dst[200:] = other.apply(src[200:])
    w = np.r_[np.ones(200), np.full(200, 1e-6)]
    fit = robust_sim3(src, dst, w, iterations=0)
    np.testing.assert_allclose(fit.r, r, atol=1e-4)
    fit = robust_sim3(src, dst, w[::-1], iterations=0)
    np.testing.assert_allclose(fit.r, other.r, atol=1e-4)
    # zero weights drop points (as do non-finite rows)
    dst[0] = np.nan
    fit = robust_sim3(src, dst, np.r_[np.ones(200), np.zeros(200)])
    assert fit.points == 199
    np.testing.assert_allclose(fit.r, r, atol=1e-10)


def test_robust_sim3_subsamples_deterministically_and_rejects_too_few_points():
    rng, src, r, t, s = _points(4)
    dst = s * src @ r.T + t + rng.normal(size=src.shape) * 0.01
    a = robust_sim3(src, dst, max_points=500, seed=7)
    b = robust_sim3(src, dst, max_points=500, seed=7)
    assert a.points == 500 and np.array_equal(a.r, b.r) and a.s == b.s
    with pytest.raises(UserInputError, match="at least 3"):
        robust_sim3(src[:2], dst[:2])
    with pytest.raises(UserInputError, match="at least 3"):
        robust_sim3(src[:5], dst[:5], [1, 1, 0, 0, 0])


# --------------------------------------------------------------------------- Sim3


def test_sim3_compose_inverse_apply_round_trip():
    rng = np.random.default_rng(0)
    a = Sim3(so3_exp(rng.normal(size=3)), rng.normal(size=3), 1.7)
    b = Sim3(so3_exp(rng.normal(size=3)), rng.normal(size=3), 0.4)
    x = rng.normal(size=(10, 3))
    np.testing.assert_allclose(a.compose(b).apply(x), a.apply(b.apply(x)), atol=1e-12)
    np.testing.assert_allclose(a.inverse().apply(a.apply(x)), x, atol=1e-12)
    np.testing.assert_allclose(a.compose(a.inverse()).as_matrix(), np.eye(4), atol=1e-12)
    np.testing.assert_allclose(a.compose(b).as_matrix(), a.as_matrix() @ b.as_matrix(), atol=1e-12)
    c = Sim3.from_matrix(a.as_matrix())
    np.testing.assert_allclose(c.r, a.r, atol=1e-12)
    np.testing.assert_allclose(c.t, a.t, atol=1e-12)
    assert c.s == pytest.approx(1.7)
    np.testing.assert_allclose(Sim3.identity().apply(x), x)
    np.testing.assert_allclose(so3_exp(so3_log(a.r)), a.r, atol=1e-12)
    with pytest.raises(ValueError):
        Sim3(np.eye(3), np.zeros(3), -1.0)


# --------------------------------------------------------------------------- pose graph


def _ring(n=15, seed=0, drift=True):
    """True poses (own scale per frame) and noisy consecutive edges with ~0.5 deg rotation, ~2%
    scale and 1% translation error each: ``drift`` uses one rotation axis and scale bias for all
    edges (a monocular model's drift), else zero-mean errors."""
    rng = np.random.default_rng(seed)
    truth = []
    for k in range(n):
        a = 2 * np.pi * k / n
        truth.append(Sim3(so3_exp(np.array([0.0, 0.0, a]) + 0.05 * rng.normal(size=3)),
                          [10 * np.cos(a), 10 * np.sin(a), 0.3 * rng.normal()], np.exp(0.5 * rng.normal())))
    bias = rng.normal(size=3)

    def noisy(rel):
        axis = bias / np.linalg.norm(bias) + 0.2 * rng.normal(size=3) if drift else rng.normal(size=3)
        scale = np.log(1.02) + 0.004 * rng.normal() if drift else 0.02 * rng.normal()
        step = np.linalg.norm(rel.t) / rel.s
        err = Sim3(so3_exp(np.deg2rad(0.5) * axis / np.linalg.norm(axis)),
                   0.01 * step * rng.normal(size=3) / np.sqrt(3), np.exp(scale))
        return rel.compose(err)

    w = 1e4  # 1 / 0.01^2
    edges = [Edge(k, k + 1, noisy(truth[k].inverse().compose(truth[k + 1])), w) for k in range(n - 1)]
    loop = Edge(n - 1, 0, noisy(truth[n - 1].inverse().compose(truth[0])), w, "loop")
    return truth, edges, loop


def _ate(poses, truth):
    a = np.array([p.t for p in poses])
    b = np.array([p.t for p in truth])
    r, t, s = umeyama_sim3(a, b)
    return float(np.sqrt(np.mean(np.sum((s * a @ r.T + t - b) ** 2, 1))))


def test_loop_closure_cuts_the_chain_drift():
    truth, edges, loop = _ring()
    chain = chain_poses(15, edges)
    sol = solve_pose_graph(15, edges + [loop])
    assert isinstance(sol, GraphSolution)
    assert _ate(sol.poses, truth) <= 0.3 * _ate(chain, truth)
    assert sol.final_cost < sol.initial_cost
    assert len(sol.edge_residuals) == 15 and sol.iterations > 0 and sol.seconds > 0 and sol.solver
    np.testing.assert_allclose(sol.poses[0].as_matrix(), np.eye(4), atol=1e-12)  # the gauge
    assert all(p.s > 0 for p in sol.poses)


def test_a_graph_without_loop_is_the_chain():
    truth, edges, _ = _ring(seed=1)
    chain = chain_poses(15, edges)
    assert chain[0].as_matrix().tolist() == np.eye(4).tolist()
    np.testing.assert_allclose(chain[5].as_matrix(), chain[4].compose(edges[4].rel).as_matrix())
    sol = solve_pose_graph(15, edges)
    for a, b in zip(sol.poses, chain):
        np.testing.assert_allclose(a.as_matrix(), b.as_matrix(), atol=1e-9)
    assert max(sol.edge_residuals) < 1e-9


@pytest.mark.parametrize("drift", [True, False])
def test_a_grossly_wrong_loop_edge_is_down_weighted(drift):
    # wrong by 30 deg, x1.5 and half the ring's radius (20 seeds: shift <= 3% of the radius,
    # <= 0.03x the non-robust one; ATE <= 1.7x the one without the wrong edge)
    truth, edges, loop = _ring(seed=2, drift=drift)
    error = Sim3(so3_exp([0.4, 0.3, 0.0]), [5.0 / truth[5].s, 0.0, 0.0], 1.5)
    wrong = truth[14].inverse().compose(truth[5]).compose(error)
    bad = Edge(14, 5, wrong, 1e4, "loop")
    good = solve_pose_graph(15, edges + [loop])
    robust = solve_pose_graph(15, edges + [loop, bad])
    plain = solve_pose_graph(15, edges + [loop, bad], robust_loops=False)

    def shift(sol):
        return max(np.linalg.norm(a.t - b.t) for a, b in zip(sol.poses, good.poses))
    assert shift(robust) < 0.1 * shift(plain)
    assert shift(robust) < 0.05 * 10  # 5% of the ring's radius
    assert _ate(robust.poses, truth) < 2 * _ate(good.poses, truth)
    assert _ate(robust.poses, truth) < 0.3 * _ate(plain.poses, truth)
    assert robust.edge_residuals[-1] > 30 * max(robust.edge_residuals[:-1])


def test_priors_on_two_nodes_put_the_result_in_their_frame():
    truth, edges, loop = _ring(seed=3)
    sol = solve_pose_graph(15, edges + [loop], [Prior(0, truth[0], 1e4), Prior(9, truth[9], 1e4)])
    # no alignment: the poses are in the priors' (the truth's) frame, scale included
    err = max(np.linalg.norm(a.t - b.t) for a, b in zip(sol.poses, truth))
    assert err < 0.02 * 10
    for a, b in zip(sol.poses, truth):
        assert a.s == pytest.approx(b.s, rel=0.03)
        assert np.linalg.norm(so3_log(a.r.T @ b.r)) < np.deg2rad(2.0)
    # one prior anchors the whole gauge too (a chain, no loop: the chain moved onto the prior)
    sol = solve_pose_graph(15, edges, [Prior(4, truth[4])])
    np.testing.assert_allclose(sol.poses[4].as_matrix(), truth[4].as_matrix(), atol=1e-9)


def test_graph_errors():
    _, edges, loop = _ring()
    with pytest.raises(ValueError, match="no edge joins nodes 3 and 4"):
        chain_poses(15, edges[:3] + edges[4:])
    with pytest.raises(ValueError, match="not connected"):
        solve_pose_graph(15, edges[:3] + edges[4:])
    with pytest.raises(ValueError, match="outside"):
        solve_pose_graph(3, edges)
    with pytest.raises(ValueError, match="kind"):
        Edge(0, 1, Sim3.identity(), kind="other")
    # a missing consecutive edge is bridged by a loop edge (spanning-tree initial guess)
    sol = solve_pose_graph(15, edges[:3] + edges[4:] + [loop])
    assert len(sol.poses) == 15


def test_posegraph_import_is_light():
    code = ("import sys; import da3_plugins.core.posegraph, da3_plugins.core.geometry.robust; "
            "print(sorted(m for m in ('pyceres', 'scipy', 'gtsam', 'pypose') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
