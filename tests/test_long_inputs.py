"""Long inputs through ``reconstruct``: drift with and without loop closure, no false loops,
resuming an interrupted run, known poses for all or some views, Gaussians carried by the
global alignment, and a predictor other than DA3 keeping every export (issue 15).

The predictor is the ground-truth one of ``core.synthetic`` with seeded per-chunk errors, so
every number here is a property of the chunking and alignment, not of a network."""

from __future__ import annotations

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core.pipeline import reconstruct
from da3_plugins.core.predictor import ChunkPrediction
from da3_plugins.core.reconstruction import GaussianSet
from da3_plugins.core.synthetic.predictor import GroundTruthPredictor
from da3_plugins.core.synthetic.trajectories import ate, make_long_scene

CHUNK, OVERLAP = 24, 8


@pytest.fixture(scope="module")
def loop_data():
    return make_long_scene("loop", n=240, seed=0)


@pytest.fixture(scope="module")
def open_data():
    return make_long_scene("open", n=240, seed=0)


def _run(data, loop_closure="auto", seed=0, systematic=False, **kw):
    scene, ext, ks, images, depth = data
    pred = kw.pop("predictor", None) or GroundTruthPredictor(ext, ks, depth, rotation_deg=0.5, scale=0.02, seed=seed,
                                                             systematic=systematic)
    return reconstruct(pred, images, max_views_per_pass=kw.pop("chunk", CHUNK), chunk_overlap=OVERLAP,
                       process_res=kw.pop("process_res", images.shape[2]), loop_closure=loop_closure, **kw)


def _end_gap(rec, true_w2c) -> float:
    """Distance from the last camera to the first after a Sim(3) fit to the truth, % of the
    trajectory length."""
    from da3_plugins.core.geometry import umeyama

    c, t = conv.camera_centers(rec.extrinsics), conv.camera_centers(true_w2c)
    r, tt, s = umeyama(c, t)
    a = s * c @ r.T + tt
    return float(np.linalg.norm(a[-1] - a[0]) / np.linalg.norm(np.diff(t, axis=0), axis=1).sum() * 100)


def test_loop_closure_removes_drift(loop_data):
    """A bias in every chunk (a network's consistent scale or rotation error) drifts linearly;
    one loop closure removes nearly all of it."""
    ext = loop_data[1]
    seq = _run(loop_data, loop_closure="off", systematic=True)
    closed = _run(loop_data, loop_closure="auto", systematic=True)
    ate_seq, ate_closed = ate(seq.extrinsics, ext), ate(closed.extrinsics, ext)
    loops = [j for j in closed.options.joints if j["kind"] == "loop"]
    assert any(j["used"] for j in loops), loops
    assert "pose graph" in closed.options.alignment
    assert seq.options.alignment.startswith("sequential")
    assert ate_seq > 0.5, "the per-chunk errors should make sequential joining drift"
    assert ate_closed <= 0.2 * ate_seq, (ate_seq, ate_closed)
    assert _end_gap(closed, ext) <= 1.0, _end_gap(closed, ext)
    # every joint is recorded with its residual
    overlaps = [j for j in closed.options.joints if j["kind"] == "overlap"]
    assert len(overlaps) == closed.options.passes - len(loops) - 1
    assert all(0 <= j["residual"] < 0.05 and j["inlier_ratio"] > 0.5 for j in overlaps)


@pytest.mark.parametrize("seed", [0, 1])
def test_loop_closure_with_random_errors(loop_data, seed):
    """Independent errors per chunk drift as a random walk; one loop closure turns it into a
    bridge pinned at both ends, whose RMS is about 1/sqrt(3) of the walk's: no better is
    possible from one loop, and that much is reached."""
    ext = loop_data[1]
    seq = _run(loop_data, loop_closure="off", seed=seed)
    closed = _run(loop_data, loop_closure="auto", seed=seed)
    assert ate(closed.extrinsics, ext) <= 0.75 * ate(seq.extrinsics, ext)
    assert _end_gap(closed, ext) <= 1.0


def test_no_loop_is_accepted_on_a_trajectory_that_never_returns(open_data):
    rec = _run(open_data, loop_closure="auto")
    loops = [j for j in rec.options.joints if j["kind"] == "loop"]
    assert not any(j["used"] for j in loops), loops
    assert rec.options.alignment.startswith("sequential")
    seq = _run(open_data, loop_closure="off")
    np.testing.assert_allclose(rec.extrinsics, seq.extrinsics)


def test_without_errors_the_chunks_join_exactly(loop_data):
    scene, ext, ks, images, depth = loop_data
    rec = _run(loop_data, predictor=GroundTruthPredictor(ext, ks, depth), loop_closure="off")
    assert ate(rec.extrinsics, ext) < 1e-3
    # the depth is the truth up to the one global scale
    s = np.median(depth / rec.depth)
    np.testing.assert_allclose(rec.depth * s, depth, rtol=1e-3)


class _Interrupt(Exception):
    pass


class _Flaky(GroundTruthPredictor):
    """Raises on its ``fail_at``-th call (an interrupted run); counts calls."""

    fail_at = None
    calls = 0

    def predict(self, chunk):
        type(self).calls += 1
        if self.fail_at is not None and type(self).calls == self.fail_at:
            raise _Interrupt()
        return super().predict(chunk)


def test_an_interrupted_run_resumes_and_gives_the_same_result(loop_data, tmp_path):
    scene, ext, ks, images, depth = loop_data
    data = (scene, ext, ks, images[:120], depth[:120])
    kw = dict(rotation_deg=0.5, scale=0.02, seed=1)
    whole = _run(data, predictor=GroundTruthPredictor(ext[:120], ks[:120], depth[:120], **kw))
    cache = tmp_path / "work"
    _Flaky.calls, _Flaky.fail_at = 0, 4
    with pytest.raises(_Interrupt):
        _run(data, predictor=_Flaky(ext[:120], ks[:120], depth[:120], **kw), cache_dir=cache)
    assert len(list(cache.glob("chunk_*.npz"))) == 3  # the passes finished before the stop
    _Flaky.calls, _Flaky.fail_at = 0, None
    resumed = _run(data, predictor=_Flaky(ext[:120], ks[:120], depth[:120], **kw), cache_dir=cache)
    passes = len(range(0, 120 - CHUNK, CHUNK - OVERLAP)) + 1
    loops = sum(j["kind"] == "loop" for j in whole.options.joints)
    assert _Flaky.calls == passes - 3 + loops  # only what was missing
    np.testing.assert_array_equal(resumed.depth, whole.depth)
    np.testing.assert_array_equal(resumed.extrinsics, whole.extrinsics)
    assert not cache.exists(), "the work folder goes once the run succeeds"


def test_a_changed_input_does_not_reuse_the_cache(loop_data, tmp_path):
    scene, ext, ks, images, depth = loop_data
    data = (scene, ext, ks, images[:60], depth[:60])
    cache = tmp_path / "work"
    _Flaky.calls, _Flaky.fail_at = 0, 3
    with pytest.raises(_Interrupt):
        _run(data, predictor=_Flaky(ext[:60], ks[:60], depth[:60]), cache_dir=cache)
    _Flaky.calls, _Flaky.fail_at = 0, None
    changed = images[:60].copy()
    changed[5] = 255 - changed[5]  # one photo changed: nothing cached may be reused
    _run((scene, ext, ks, changed, depth[:60]), predictor=_Flaky(ext[:60], ks[:60], depth[:60]), cache_dir=cache)
    assert _Flaky.calls == len(range(0, 60 - CHUNK, CHUNK - OVERLAP)) + 1


def test_known_poses_for_every_view_condition_each_chunk(loop_data):
    scene, ext, ks, images, depth = loop_data
    n = 100
    rec = _run((scene, ext, ks, images[:n], depth[:n]), extrinsics=ext[:n], intrinsics=ks[:n],
               predictor=GroundTruthPredictor(ext[:n], ks[:n], depth[:n], rotation_deg=0.5, scale=0.02))
    assert rec.options.camera_source == "input"
    np.testing.assert_allclose(rec.extrinsics, ext[:n, :3], atol=1e-9)
    assert rec.options.joints == ()


def test_known_poses_for_some_views_anchor_the_result(loop_data):
    scene, ext, ks, images, depth = loop_data
    known = np.full(ext.shape, np.nan)
    known[::10] = ext[::10]
    rec = _run(loop_data, extrinsics=known, intrinsics=ks, loop_closure="off")
    free = _run(loop_data, loop_closure="off")
    assert rec.options.camera_source == "input"
    assert "anchor" in rec.options.alignment
    # in the poses' frame: the error without any fit is small, and smaller than drift alone
    err = np.linalg.norm(conv.camera_centers(rec.extrinsics) - conv.camera_centers(ext), axis=1)
    length = np.linalg.norm(np.diff(conv.camera_centers(ext), axis=0), axis=1).sum()
    assert err.mean() / length * 100 < 0.5 * ate(free.extrinsics, ext)
    np.testing.assert_allclose(rec.extrinsics[::10], ext[::10, :3], atol=1e-9)


class _WithGaussians(GroundTruthPredictor):
    """The ground-truth predictor plus one Gaussian per pixel at its point (chunk frame)."""

    has_gaussians = True

    def predict(self, chunk):
        pred: ChunkPrediction = super().predict(chunk)
        from da3_plugins.core.points import depth_to_points

        pts = depth_to_points(pred.depth, pred.intrinsics, pred.extrinsics).reshape(-1, 3).astype(np.float32)
        m = pts.shape[0]
        pred.gaussians = GaussianSet(means=pts, scales=np.full((m, 3), 0.01, np.float32),
                                     rotations=np.tile(np.float32([1, 0, 0, 0]), (m, 1)),
                                     harmonics=np.zeros((m, 3, 1), np.float32), opacities=np.ones(m, np.float32),
                                     view=np.repeat(chunk.views.astype(np.int32), pred.depth[0].size))
        return pred


def test_gaussians_follow_the_global_alignment(loop_data):
    scene, ext, ks, images, depth = loop_data
    pred = _WithGaussians(ext, ks, depth, rotation_deg=0.5, scale=0.02)
    rec = _run(loop_data, predictor=pred, infer_gs=True)
    g = rec.gaussians
    assert g is not None and len(g) == depth.size
    order = np.argsort(g.view, kind="stable")
    np.testing.assert_allclose(g.means[order], rec.world_points().reshape(-1, 3), atol=1e-4)


def test_any_predictor_keeps_the_exports(loop_data, tmp_path):
    from da3_plugins.core.export.registry import write_exports

    scene, ext, ks, images, depth = loop_data
    data = (scene, ext, ks, images[:40], depth[:40])
    rec = _run(data, predictor=GroundTruthPredictor(ext[:40], ks[:40], depth[:40]))
    assert rec.model == "ground-truth"
    files = write_exports(rec, tmp_path, ("scene", "ply", "colmap"))
    import pycolmap

    model = pycolmap.Reconstruction(str(tmp_path / files["colmap"]))
    assert model.num_reg_images() == 40


def test_a_scene_folder_gets_the_result_as_it_is_produced(loop_data, tmp_path):
    from da3_plugins.core.reconstruction import Reconstruction

    scene, ext, ks, images, depth = loop_data
    data = (scene, ext, ks, images[:80], depth[:80])
    pred = lambda: _WithGaussians(ext[:80], ks[:80], depth[:80], rotation_deg=0.5, scale=0.02)  # noqa: E731
    in_memory = _run(data, predictor=pred(), infer_gs=True)
    on_disk = _run(data, predictor=pred(), infer_gs=True, scene_dir=tmp_path / "scene")
    assert isinstance(on_disk.depth, np.memmap) and isinstance(on_disk.images, np.memmap)
    for name in ("images", "depth", "conf", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(np.asarray(getattr(on_disk, name)), getattr(in_memory, name), err_msg=name)
    np.testing.assert_array_equal(np.asarray(on_disk.gaussians.means), in_memory.gaussians.means)
    again = Reconstruction.load(tmp_path / "scene")
    assert again.options.joints == in_memory.options.joints


def test_metric_predictors_are_joined_rigidly(loop_data):
    scene, ext, ks, images, depth = loop_data
    data = (scene, ext, ks, images[:80], depth[:80])
    pred = GroundTruthPredictor(ext[:80], ks[:80], depth[:80], rotation_deg=0.5, scale=0.02, is_metric=True)
    rec = _run(data, predictor=pred, loop_closure="off")
    assert rec.is_metric
    assert all(j["scale"] == 1.0 for j in rec.options.joints)  # SE(3): metres stay metres


def test_da3p_takes_poses_for_some_views(tmp_path):
    """A pose file with NaN rows for the views without a known pose (the README's rule)."""
    import cv2

    from da3_plugins.cli import main
    from da3_plugins.core import Reconstruction

    scene, ext, ks, images, depth = make_long_scene("loop", n=24, seed=1)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), im[..., ::-1])
    poses = np.full((24, 4, 4), np.nan)
    poses[::4] = ext[::4]
    np.save(tmp_path / "w2c.npy", poses)
    np.save(tmp_path / "k.npy", ks)
    out = tmp_path / "out"
    code = main(["reconstruct", str(folder), "-o", str(out), "--model", "embedded", "--process-res", "168",
                 "--export", "scene", "--poses", str(tmp_path / "w2c.npy"), "--intrinsics", str(tmp_path / "k.npy"),
                 "--max-views", "10", "--chunk-overlap", "3", "--progress", "none"])
    assert code == 0
    rec = Reconstruction.load(out / "scene.npz")
    assert rec.options.camera_source == "input" and "given poses" in rec.options.alignment
    np.testing.assert_allclose(rec.extrinsics[::4], ext[::4, :3], atol=1e-9)
