"""The ground-truth predictor (core.synthetic.predictor) and the long trajectories, covisibility
and ATE (core.synthetic.trajectories): truth up to the chunk's Sim(3), seeded errors that
survive an overlap fit, pixel features that find the same place, far views that share nothing."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core.geometry import apply_sim3_to_points, apply_sim3_to_poses, umeyama_sim3
from da3_plugins.core.points import depth_to_points
from da3_plugins.core.predictor import ChunkInput, Predictor, check_prediction
from da3_plugins.core.quaternions import quat_wxyz_to_matrix
from da3_plugins.core.synthetic import (GroundTruthPredictor, ate, covisibility, image_features, loop_trajectory,
                                        make_long_scene, make_scene, open_trajectory)

N_LOOP = 48  # a short loop keeps the suite fast; the 240-view numbers are in the slow test


@pytest.fixture(scope="module")
def loop():
    """(scene, extrinsics, intrinsics, images, depth) of a 48-view loop at 63 x 84 (about 1 s)."""
    out = make_long_scene("loop", n=N_LOOP, height=63, width=84, seed=0)
    for a in out[1:]:
        a.setflags(write=False)
    return out


def _chunk(loop, views, **kw) -> ChunkInput:
    views = np.asarray(views)
    return ChunkInput(pixels=loop[3][views], views=views, **kw)


def _world(pred, k: int, stride: int = 3) -> np.ndarray:
    return depth_to_points(pred.depth[k], pred.intrinsics[k], pred.extrinsics[k], stride=stride,
                           dtype=np.float64).reshape(-1, 3)


def _true_world(loop, view: int, stride: int = 3) -> np.ndarray:
    _, ext, ks, _, depth = loop
    return depth_to_points(depth[view], ks[view], ext[view], stride=stride, dtype=np.float64).reshape(-1, 3)


def _angle_deg(r: np.ndarray) -> float:
    return math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0)))


def _random_sim3(seed: int):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    return quat_wxyz_to_matrix(q / np.linalg.norm(q)), rng.normal(size=3), float(rng.uniform(0.3, 3.0))


# ----------------------------------------------------------------------------- the protocol


def test_it_is_a_predictor_and_its_answers_pass_the_shape_check(loop):
    gt = GroundTruthPredictor.from_scene(loop[0], rotation_deg=0.5, scale=0.02, depth_noise=0.01)
    assert isinstance(gt, Predictor)
    assert (gt.name, gt.predicts_cameras, gt.has_gaussians, gt.is_metric) == ("ground-truth", True, False, False)
    assert GroundTruthPredictor.from_scene(loop[0], is_metric=True).is_metric
    chunk = _chunk(loop, range(5, 17), want_features=True)
    pred = check_prediction(gt.predict(chunk), chunk, gt.name)
    assert pred.depth.dtype == np.float32 and pred.conf.dtype == np.float32 and pred.features.dtype == np.float32
    assert pred.extrinsics.shape == (12, 3, 4) and pred.features.shape[0] == 12
    assert (pred.conf >= 1).all() and (pred.conf <= 2).all() and (pred.conf < 2).any()  # noise lowers it
    assert pred.sky is None and not pred.is_metric  # a closed room: every depth is valid
    assert gt.predict(_chunk(loop, range(5, 17))).features is None  # only when asked


def test_bad_chunks_are_refused(loop):
    gt = GroundTruthPredictor.from_scene(loop[0])
    with pytest.raises(ValueError, match="indices"):
        gt.predict(ChunkInput(pixels=loop[3][:2], views=np.array([0, N_LOOP])))
    with pytest.raises(ValueError, match="processed size"):
        gt.predict(ChunkInput(pixels=np.zeros((2, 14, 14, 3), np.uint8), views=np.array([0, 1])))
    with pytest.raises(ValueError, match="depth"):
        GroundTruthPredictor(loop[1], loop[2], loop[4][:3])
    with pytest.raises(ValueError, match="rotation_deg"):
        GroundTruthPredictor.from_scene(loop[0], rotation_deg=-1)


# ----------------------------------------------------------------------------- the truth


def test_without_error_it_is_the_truth_up_to_the_chunks_sim3(loop):
    _, ext, _, _, depth = loop
    gt = GroundTruthPredictor.from_scene(loop[0])
    views = np.arange(5, 17)
    pred = gt.predict(_chunk(loop, views))
    # the chunk's frame: its first view at the identity, the median camera distance to it is 1
    np.testing.assert_allclose(pred.extrinsics[0], np.eye(4)[:3], atol=1e-12)
    assert np.median(np.linalg.norm(conv.camera_centers(pred.extrinsics)[1:], axis=1)) == pytest.approx(1.0)
    # relative rotations are exact
    for k in range(len(views)):
        rel_p = pred.extrinsics[k, :, :3] @ pred.extrinsics[0, :, :3].T
        rel_t = ext[views[k], :3, :3] @ ext[views[0], :3, :3].T
        assert _angle_deg(rel_p @ rel_t.T) < 1e-5
    # one Sim(3) maps every view's points onto the true world points (depth scaled with the poses)
    r, t, s = umeyama_sim3(conv.camera_centers(pred.extrinsics), conv.camera_centers(ext[views]))
    for k in range(len(views)):
        got = apply_sim3_to_points(_world(pred, k), r, t, s)
        np.testing.assert_allclose(got, _true_world(loop, views[k]), atol=2e-5 * float(depth.max()))
    np.testing.assert_allclose(pred.depth * s, depth[views], rtol=1e-5)


def test_depth_may_be_a_function_of_the_view(loop):
    scene = loop[0]
    calls = []

    def depth_of(view):
        calls.append(view)
        return scene.depth[view]

    lazy = GroundTruthPredictor(scene.extrinsics, scene.intrinsics, depth_of, rotation_deg=0.5, scale=0.02)
    eager = GroundTruthPredictor.from_scene(scene, rotation_deg=0.5, scale=0.02)
    a, b = lazy.predict(_chunk(loop, [3, 9, 4])), eager.predict(_chunk(loop, [3, 9, 4]))
    assert calls == [3, 9, 4]
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.extrinsics, b.extrinsics)


def test_conditioned_chunks_come_back_in_the_given_frame_without_error(loop):
    _, ext, _, _, depth = loop
    gt = GroundTruthPredictor.from_scene(loop[0], rotation_deg=2.0, scale=0.05, translation=0.05, depth_noise=0.02)
    views = np.arange(20, 30)
    r, t, s = _random_sim3(1)
    given = apply_sim3_to_poses(ext[views], r, t, s)
    pred = gt.predict(_chunk(loop, views, extrinsics=conv.as_4x4(given), intrinsics=loop[2][views]))
    np.testing.assert_allclose(pred.extrinsics, given, atol=1e-12)
    np.testing.assert_allclose(pred.depth, depth[views] * s, rtol=1e-5)


# ----------------------------------------------------------------------------- the errors


def test_errors_are_seeded_per_chunk(loop):
    kw = dict(rotation_deg=0.5, scale=0.02, translation=0.02, depth_noise=0.01)
    gt, again, other = (GroundTruthPredictor.from_scene(loop[0], seed=s, **kw) for s in (0, 0, 1))
    views = np.arange(10, 22)
    a, b, c = gt.predict(_chunk(loop, views)), again.predict(_chunk(loop, views)), other.predict(_chunk(loop, views))
    np.testing.assert_array_equal(a.extrinsics, b.extrinsics)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert np.abs(a.extrinsics - c.extrinsics).max() > 1e-4
    # every view index counts (two loop-closure chunks with the same ends and length differ)
    same_ends = np.r_[10:16, 30:35, 21]
    d = gt.predict(_chunk(loop, same_ends))
    assert np.abs(gt.chunk_error(views)[0] - gt.chunk_error(same_ends)[0]).max() > 1e-4
    assert not np.allclose(d.extrinsics[0], d.extrinsics[-1])


def test_the_error_grows_along_the_chunk_to_exactly_xi(loop):
    """View k of n carries exp(k/(n-1) xi): the last view's rotation and scale errors have
    exactly the requested magnitudes, and each view's points move rigidly with its pose."""
    _, ext, _, _, depth = loop
    gt = GroundTruthPredictor.from_scene(loop[0], rotation_deg=0.5, scale=0.02, translation=0.03, seed=4)
    truth = GroundTruthPredictor.from_scene(loop[0])
    views = np.arange(30, 42)
    pred, exact = gt.predict(_chunk(loop, views)), truth.predict(_chunk(loop, views))
    rotvec, log_scale, translation = gt.chunk_error(views)
    assert math.degrees(np.linalg.norm(rotvec)) == pytest.approx(0.5)
    assert abs(log_scale) == pytest.approx(0.02) and np.linalg.norm(translation) == pytest.approx(0.03)
    np.testing.assert_allclose(pred.extrinsics[0], exact.extrinsics[0], atol=1e-12)  # the first view is exact
    last = pred.extrinsics[-1, :, :3] @ exact.extrinsics[-1, :, :3].T
    assert _angle_deg(last) == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(pred.depth[-1] / exact.depth[-1], math.exp(log_scale), rtol=1e-5)
    # the translation error is in units of the chunk's scene scale (median depth of its first view)
    scene_scale = float(np.median(exact.depth[0]))
    for k in (5, len(views) - 1):
        a = k / (len(views) - 1)
        r = _rotation_of(a * rotvec)
        want = apply_sim3_to_points(_world(exact, k), r, a * scene_scale * translation, math.exp(a * log_scale))
        np.testing.assert_allclose(_world(pred, k), want, atol=1e-4)


def _rotation_of(w: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(w))
    if angle == 0:
        return np.eye(3)
    return quat_wxyz_to_matrix(np.r_[math.cos(angle / 2), math.sin(angle / 2) * w / angle])


@pytest.mark.parametrize("seed", [0, 3, 5])
def test_joining_overlapping_chunks_leaves_the_expected_drift(loop, seed):
    """Chunks 0-23 and 12-35 joined by the Sim(3) fit of their 12 shared views' points: the
    overlap fit cannot undo the error, the end of the second chunk is off by about
    |mean(a_A) w_A + (1 - mean(a_B)) w_B| (w: the chunks' rotation errors in the world,
    a: the shared views' error fractions), and without error the join is exact."""
    _, ext, _, images, _ = loop

    def join(gt):
        a = gt.predict(_chunk(loop, np.arange(0, 24)))
        b = gt.predict(_chunk(loop, np.arange(12, 36)))
        src = np.concatenate([_world(b, k) for k in range(12)])
        dst = np.concatenate([_world(a, 12 + k) for k in range(12)])
        r, t, s = umeyama_sim3(src, dst)
        joined = np.concatenate([conv.as_4x4(a.extrinsics), conv.as_4x4(apply_sim3_to_poses(b.extrinsics, r, t, s))[12:]])
        end = joined[35, :3, :3] @ joined[0, :3, :3].T @ (ext[35, :3, :3] @ ext[0, :3, :3].T).T
        return joined, _angle_deg(end)

    joined, err = join(GroundTruthPredictor.from_scene(loop[0]))
    assert err < 1e-5 and ate(joined, ext[:36]) < 1e-5
    gt = GroundTruthPredictor.from_scene(loop[0], rotation_deg=0.5, scale=0.02, seed=seed)
    joined, err = join(gt)
    w_a = ext[0, :3, :3].T @ gt.chunk_error(np.arange(0, 24))[0]  # chunk frame -> world
    w_b = ext[12, :3, :3].T @ gt.chunk_error(np.arange(12, 36))[0]
    expected = math.degrees(np.linalg.norm(np.mean(np.arange(12, 24) / 23) * w_a
                                           + (1 - np.mean(np.arange(12) / 23)) * w_b))
    assert err > 0.2, "the overlap fit undid the error: no drift"
    assert err == pytest.approx(expected, rel=0.3, abs=0.03)
    assert ate(joined, ext[:36]) > 0.1  # percent of the path


# ----------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def loop_views():
    """Views 0, 1, 60, 90, 120, 150, 180, 239 of the 240-view loop at 126 x 168 (rendered alone)."""
    base = make_scene("room", num_views=1, height=126, width=168, seed=0)
    pick = np.array([0, 1, 60, 90, 120, 150, 180, 239])
    images, _ = base.render_views(loop_trajectory(base, 240)[pick], np.tile(base.intrinsics[0], (len(pick), 1, 1)))
    return pick, images


def test_features_find_the_same_place_and_tell_other_places_apart(loop_views, loop):
    pick, images = loop_views
    f = image_features(images)
    assert f.dtype == np.float32 and f.shape == (len(pick), 768)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, rtol=1e-5)
    sim = f @ f.T
    at = {v: i for i, v in enumerate(pick)}
    same = [sim[at[0], at[239]], sim[at[0], at[1]]]  # the loop's end next to its start; neighbours
    other = [sim[at[a], at[b]] for a in pick for b in pick if min(abs(a - b), 240 - abs(a - b)) >= 60]
    assert min(same) >= 0.95, same  # measured 0.986 and 0.987
    assert max(other) <= 0.6, other  # measured <= 0.45 (every pair 48+ views apart on the full loop)
    # the predictor's features are these, computed from the chunk's pixels
    gt = GroundTruthPredictor.from_scene(loop[0])
    pred = gt.predict(_chunk(loop, [0, 5], want_features=True))
    np.testing.assert_array_equal(pred.features, image_features(loop[3][[0, 5]]))


def test_features_see_pixels_not_the_truth(loop):
    gt = GroundTruthPredictor.from_scene(loop[0])
    chunk = _chunk(loop, [0, 1], want_features=True)
    dark = ChunkInput(pixels=(chunk.pixels // 2), views=chunk.views, want_features=True)
    flipped = ChunkInput(pixels=chunk.pixels[:, :, ::-1].copy(), views=chunk.views, want_features=True)
    base = gt.predict(chunk).features
    assert (base * gt.predict(dark).features).sum(1).min() > 0.99  # brightness hardly matters
    assert (base * gt.predict(flipped).features).sum(1).max() < 0.9  # the picture does


# ----------------------------------------------------------------------------- covisibility


@pytest.fixture(scope="module")
def open_views():
    """Depth of views 0, 1, 12, 24, 48, 60, 120, 239 of the 240-view open trajectory (126 x 168)."""
    base = make_scene("room", num_views=1, height=126, width=168, seed=0)
    pick = np.array([0, 1, 12, 24, 48, 60, 120, 239])
    ext = open_trajectory(base, 240)[pick]
    ks = np.tile(base.intrinsics[0], (len(pick), 1, 1))
    _, depth = base.render_views(ext, ks)
    return pick, ext, ks, depth


def test_covisibility_on_the_open_trajectory(open_views):
    pick, ext, ks, depth = open_views

    def cov(a, b):
        i, j = int(np.flatnonzero(pick == a)[0]), int(np.flatnonzero(pick == b)[0])
        return covisibility(depth[i], ks[i], ext[i], depth[j], ks[j], ext[j])

    assert cov(0, 0) == 1.0 and cov(120, 120) == 1.0
    assert cov(0, 1) > 0.95 and cov(0, 12) > 0.5  # measured 0.973 and 0.637
    assert 0.05 < cov(0, 24) < 0.6
    for a, b in [(0, 48), (0, 60), (0, 120), (0, 239), (60, 120), (120, 239), (12, 60)]:
        assert cov(a, b) == 0.0 and cov(b, a) == 0.0, (a, b)
    # every view sees only the wall, square on, 0.8 away (z-depth is constant on it)
    np.testing.assert_allclose(depth, 0.8, rtol=1e-5)


def test_covisibility_counts_only_consistent_depth(loop):
    _, ext, ks, _, depth = loop
    assert covisibility(depth[0], ks[0], ext[0], depth[0], ks[0], ext[0]) == 1.0
    near = covisibility(depth[0], ks[0], ext[0], depth[1], ks[1], ext[1])
    assert near > 0.8
    # a wall put in front of view 1 hides everything: projections land but depth disagrees
    assert covisibility(depth[0], ks[0], ext[0], np.full_like(depth[1], 0.1), ks[1], ext[1]) == 0.0


# ----------------------------------------------------------------------------- ATE


def test_ate_is_zero_for_the_truth_and_invariant_to_a_sim3(loop):
    ext = loop[1]
    assert ate(ext, ext) < 1e-9
    r, t, s = _random_sim3(2)
    assert ate(apply_sim3_to_poses(ext, r, t, s), ext) < 1e-7
    c2w = conv.w2c_to_c2w(ext)
    c2w[:, :3, 3] += np.random.default_rng(0).normal(0, 0.01, (len(ext), 3))
    noisy = conv.c2w_to_w2c(c2w)
    value = ate(noisy, ext)
    assert 0 < value < 1  # percent of the ~19 long ring
    assert ate(apply_sim3_to_poses(noisy, r, t, s), ext) == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError):
        ate(ext[:2], ext[:2])


# ----------------------------------------------------------------------------- long scenes


def test_make_long_scene_returns_consistent_views():
    scene, ext, ks, images, depth = make_long_scene("open", n=6, height=42, width=56, seed=1)
    assert ext.shape == (6, 4, 4) and ks.shape == (6, 3, 3) and images.shape == (6, 42, 56, 3)
    assert images.dtype == np.uint8 and depth.shape == (6, 42, 56) and (depth > 0).all()
    assert scene.num_views == 6 and scene.config.num_views == 6
    np.testing.assert_array_equal(scene.extrinsics, ext[:, :3])
    assert "noise" in [p.material.pattern for p in scene.primitives]
    pred = GroundTruthPredictor.from_scene(scene).predict(ChunkInput(pixels=images, views=np.arange(6)))
    np.testing.assert_allclose(pred.extrinsics[0], np.eye(4)[:3], atol=1e-12)
    with pytest.raises(ValueError, match="trajectory"):
        make_long_scene("spiral", n=4)


@pytest.mark.slow
def test_the_240_view_scenes_at_full_size():
    """The numbers reported for issue 15: render time, feature similarity on the loop and the
    open path, covisibility of far views on the open path."""
    for kind in ("loop", "open"):
        start = time.perf_counter()
        scene, ext, ks, images, depth = make_long_scene(kind, n=240)
        seconds = time.perf_counter() - start
        f = image_features(images)
        sim = f @ f.T
        gap = np.abs(np.arange(240)[:, None] - np.arange(240)[None])
        if kind == "loop":
            gap = np.minimum(gap, 240 - gap)
        far = sim[gap >= 48]
        print(f"{kind}: {seconds:.1f} s; cosine 0-239 {sim[0, 239]:.3f}, neighbours >= {sim[gap == 1].min():.3f}, "
              f"48+ apart <= {far.max():.3f}")
        assert images.shape == (240, 126, 168, 3)
        if kind == "loop":
            assert sim[0, 239] >= 0.95 and far.max() <= 0.6
        else:
            assert far.max() <= 0.75  # no far view looks like the same place
            covis = [covisibility(depth[i], ks[i], ext[i], depth[i + 48], ks[i + 48], ext[i + 48])
                     for i in range(0, 192, 8)]
            assert max(covis) == 0.0
