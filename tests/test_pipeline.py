"""The reconstruction pipeline beyond parity: chunked long inputs, Gaussians carried between
frames, the scene file, options and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from da3_plugins.core import Reconstruction, random_model
from da3_plugins.core import conventions as conv
from da3_plugins.core.model.outputs import NetworkOutput
from da3_plugins.core.pipeline import chunk_ranges, normalize_extrinsics, reconstruct, transform_gaussians
from da3_plugins.core.reconstruction import GaussianSet, SceneFileError
from helpers import random_cameras


# ----------------------------------------------------------------------------- chunks


class GroundTruthNet(nn.Module):
    """Stands in for the network: returns true depth and cameras of the views it is shown,
    in the frame of the first of them and at a scale of its own (as DA3 does per pass)."""

    def __init__(self, images: torch.Tensor, depth: np.ndarray, w2c: np.ndarray, k: np.ndarray):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.images, self.depth, self.w2c, self.k = images, depth, conv.as_4x4(w2c), k
        self.predicts_cameras, self.has_gaussians = True, False
        self.calls = []

    def forward(self, images, extrinsics=None, intrinsics=None, **kw):
        idx = [int(torch.argmin((self.images - im).abs().flatten(1).sum(1))) for im in images[0]]
        self.calls.append(idx)
        scale = 0.5 + len(self.calls)  # every pass has its own arbitrary scale
        ref = self.w2c[idx[0]]
        rel = self.w2c[idx] @ np.linalg.inv(ref)
        rel[:, :3, 3] *= scale
        return NetworkOutput(
            depth=torch.from_numpy(self.depth[idx] * scale)[None].float(),
            depth_conf=torch.ones(1, len(idx), *self.depth.shape[1:]) * 2,
            extrinsics=torch.from_numpy(rel[:, :3, :])[None].float(),
            intrinsics=torch.from_numpy(self.k[idx])[None].float(),
        )


class _Model:
    def __init__(self, net):
        self.net, self.preset, self.source = net, "ground-truth", "ground-truth"
        self.config = type("C", (), {"backbone": type("B", (), {"embed_dim": 384})()})()

    device = torch.device("cpu")
    predicts_cameras = True
    has_gaussians = False


def _scene(n, h=42, w=56, seed=0):
    rng = np.random.default_rng(seed)
    ext, k = random_cameras(1, n, h, w, seed=seed)
    depth = (2 + rng.random((n, h, w)) + np.linspace(0, 1, w)[None, None]).astype(np.float32)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    return images, depth, ext[0].double().numpy(), k[0].double().numpy()


def test_chunks_join_into_one_consistent_scene():
    n = 11
    images, depth, w2c, k = _scene(n)
    from da3_plugins.core.preprocess import normalize

    net = GroundTruthNet(normalize(np.stack(images)), depth, w2c, k)
    rec = reconstruct(_Model(net), images, process_res=56, max_views_per_pass=4, chunk_overlap=2)
    assert len(net.calls) == rec.options["passes"] == 5
    assert net.calls[0] == [0, 1, 2, 3] and net.calls[1] == [2, 3, 4, 5]
    # one Sim(3) maps the whole result onto the truth (the first pass fixes frame and scale)
    truth = Reconstruction(images=np.stack(images), depth=depth, extrinsics=w2c, intrinsics=k)
    ours, true = rec.world_points().reshape(-1, 3), truth.world_points().reshape(-1, 3)
    from da3_plugins.core.geometry import umeyama

    r, t, s = umeyama(ours.astype(np.float64), true.astype(np.float64))
    resid = np.linalg.norm(s * ours @ r.T + t - true, axis=1)
    assert resid.max() < 1e-4 * np.linalg.norm(true.max(0) - true.min(0))
    # the cameras follow the same map
    c_ours = s * rec.camera_centers @ r.T + t
    np.testing.assert_allclose(c_ours, truth.camera_centers, atol=1e-4)


def test_chunk_ranges_cover_everything():
    assert chunk_ranges(5, 8, 2) == [range(5)]
    rs = chunk_ranges(20, 8, 3)
    assert rs[0] == range(0, 8) and rs[-1].stop == 20
    for a, b in zip(rs, rs[1:]):
        assert a.stop - b.start >= 3
    assert set().union(*map(set, rs)) == set(range(20))


def test_chunked_random_model_runs_and_is_repeatable():
    model = random_model("da3-small")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(7)]
    a = model.reconstruct(images, process_res=56, max_views_per_pass=4, chunk_overlap=2)
    b = model.reconstruct(images, process_res=56, max_views_per_pass=4, chunk_overlap=2)
    loops = [j for j in a.options.joints if j["kind"] == "loop"]
    assert a.options["passes"] == 3 + len(loops)  # views 0-3, 2-5, 3-6, and a check of each loop candidate
    assert [(j["a"], j["b"]) for j in a.options.joints if j["kind"] == "overlap"] == [(0, 1), (1, 2)]
    np.testing.assert_array_equal(a.depth, b.depth)
    assert np.isfinite(a.depth).all() and np.isfinite(a.extrinsics).all()


# ----------------------------------------------------------------------------- poses


def test_normalize_extrinsics_matches_definition():
    ext, _ = random_cameras(1, 4, 10, 10, seed=2)
    out = normalize_extrinsics(ext.double())
    torch.testing.assert_close(out[0, 0], torch.eye(4, dtype=torch.float64), atol=1e-9, rtol=0)
    rel = ext.double() @ torch.linalg.inv(ext.double()[:, :1])
    centres = -(rel[..., :3, :3].transpose(-1, -2) @ rel[..., :3, 3:])[..., 0]
    dists = centres.norm(dim=-1)[0]
    lower_median = torch.sort(dists).values[(len(dists) - 1) // 2]
    torch.testing.assert_close(out[..., :3, 3], rel[..., :3, 3] / lower_median)


def test_intrinsics_alone_warn():
    model = random_model("da3-small")
    img = np.zeros((42, 56, 3), np.uint8)
    with pytest.warns(UserWarning, match="intrinsics without extrinsics"):
        model.reconstruct([img, img], intrinsics=np.eye(3), process_res=56)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(infer_gs=True), "infer_gs"),
        (dict(extrinsics=np.tile(np.eye(4), (2, 1, 1))), "intrinsics"),
        (dict(extrinsics=np.tile(np.eye(4), (3, 1, 1)), intrinsics=np.eye(3)), "extrinsics"),
        (dict(process_res_method="bilinear"), "process_res_method"),
        (dict(ref_view_strategy="best"), "ref_view_strategy"),
        (dict(process_res=10), "process_res"),
    ],
)
def test_bad_arguments(kwargs, match):
    model = random_model("da3-small")
    img = np.zeros((42, 56, 3), np.uint8)
    with pytest.raises(ValueError, match=match):
        model.reconstruct([img, img], **{"process_res": 56, **kwargs})


# ----------------------------------------------------------------------------- Gaussians


def _quat_wxyz_to_mat(q):
    w, x, y, z = q.T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def test_transform_gaussians_moves_every_part():
    rng = np.random.default_rng(0)
    g = 50
    q = rng.normal(size=(g, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gs = GaussianSet(means=rng.normal(size=(g, 3)), scales=rng.random((g, 3)) + 0.1, rotations=q,
                     harmonics=rng.normal(size=(g, 3, 9)), opacities=rng.random(g))
    ang = 0.7
    r = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    t, s = np.array([1.0, -2.0, 0.5]), 1.7
    out = transform_gaussians(gs, r, t, s)
    np.testing.assert_allclose(out.means, s * gs.means @ r.T + t, atol=1e-5)
    np.testing.assert_allclose(out.scales, gs.scales * s, rtol=1e-6)
    # covariance R M diag(s^2) M^T R^T, read the renderer's way (w, x, y, z)
    m_old, m_new = _quat_wxyz_to_mat(gs.rotations.astype(np.float64)), _quat_wxyz_to_mat(out.rotations.astype(np.float64))
    np.testing.assert_allclose(m_new, r @ m_old, atol=1e-5)
    # colour seen along a world direction d equals the old colour along R^T d
    from da3_plugins.core.model.gaussians import real_sh_basis

    d = rng.normal(size=(1, 3))
    d /= np.linalg.norm(d)
    basis_new = real_sh_basis(torch.from_numpy(d), 2).numpy()[0]
    basis_old = real_sh_basis(torch.from_numpy(d @ r), 2).numpy()[0]
    np.testing.assert_allclose(out.harmonics @ basis_new, gs.harmonics @ basis_old, atol=1e-4)


# ----------------------------------------------------------------------------- scene file


def _rec(**kw):
    n, h, w = 2, 6, 8
    rng = np.random.default_rng(0)
    base = dict(images=rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8), depth=rng.random((n, h, w)) + 1,
                extrinsics=np.tile(np.eye(4)[:3], (n, 1, 1)), intrinsics=np.tile(np.array([[8.0, 0, 4], [0, 8, 3], [0, 0, 1]]), (n, 1, 1)),
                conf=rng.random((n, h, w)) + 1, original_sizes=np.array([[12, 16], [12, 16]]),
                image_names=["a", "b"], sky=rng.random((n, h, w)) > 0.8, model="test", options={"x": 1})
    base.update(kw)
    return Reconstruction(**base)


def test_scene_file_round_trip_is_numpy_only(tmp_path):
    g = 5
    gs = GaussianSet(np.ones((g, 3)), np.ones((g, 3)), np.tile([1.0, 0, 0, 0], (g, 1)), np.zeros((g, 3, 4)),
                     np.full(g, 0.5), view=np.zeros(g))
    rec = _rec(gaussians=gs, is_metric=True)
    path = rec.save(tmp_path / "scene")
    assert path.name == "scene.npz"
    back = Reconstruction.load(path)
    for f in ("images", "depth", "conf", "extrinsics", "intrinsics", "original_sizes", "sky", "pixel_transform"):
        np.testing.assert_array_equal(getattr(back, f), getattr(rec, f))
    assert back.image_names == ["a", "b"] and back.is_metric and back.options.extra == {"x": 1}
    np.testing.assert_array_equal(back.gaussians.rotations, gs.rotations)
    # intrinsics at the original size: twice the processed ones
    np.testing.assert_allclose(back.intrinsics_original[0], [[16, 0, 8], [0, 16, 6], [0, 0, 1]])
    # readable without allow_pickle (what the Blender add-on does)
    with np.load(path, allow_pickle=False) as z:
        assert int(z["schema_version"]) == 1


def test_scene_file_errors(tmp_path):
    rec = _rec()
    path = rec.save(tmp_path / "s.npz")
    with np.load(path) as z:
        arrays = dict(z)
    for name, change, match in [
        ("newer", {"schema_version": np.array(2)}, "newer"),
        ("missing", {"depth": None}, "'depth' is missing"),
        ("shape", {"depth": np.zeros((3, 6, 8), np.float32)}, "depth: expected shape"),
        ("foreign", {"schema": np.array("other")}, "not a da3-plugins scene file"),
    ]:
        bad = {k: v for k, v in {**arrays, **change}.items() if v is not None}
        np.savez(tmp_path / f"{name}.npz", **bad)
        with pytest.raises(SceneFileError, match=match):
            Reconstruction.load(tmp_path / f"{name}.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(SceneFileError, match="junk.npz"):
        Reconstruction.load(tmp_path / "junk.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    rec = _rec()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(RuntimeError):
        rec.save(tmp_path / "s.npz")
    assert list(tmp_path.iterdir()) == []


def test_points_filters_and_stride():
    rec = _rec()
    all_pts = rec.points(drop_sky=False)
    assert len(all_pts) == rec.depth.size
    kept = rec.points(conf_threshold=1.5)
    assert len(kept) == int(((rec.conf >= 1.5) & ~rec.sky).sum())
    strided = rec.points(stride=2, drop_sky=False)
    # the strided points are exactly the full-resolution points of the same pixels
    full = rec.world_points()[:, ::2, ::2].reshape(-1, 3)
    np.testing.assert_allclose(strided.positions, full, atol=1e-6)
    with pytest.raises(ValueError, match="stride"):
        rec.points(stride=0)


def test_gaussians_through_the_pipeline_and_gs_ply(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    from da3_plugins.core import get_preset
    from da3_plugins.core.model.config import shrink_backbone
    from da3_plugins.core.export import write_gaussian_ply

    cfg = shrink_backbone(get_preset("da3-giant"), 4, [0, 1, 2, 3], alt_start=1)
    model = random_model(cfg)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (42, 56, 3), dtype=np.uint8) for _ in range(3)]
    rec = model.reconstruct(images, process_res=56, infer_gs=True)
    gs = rec.gaussians
    assert len(gs) == 3 * 42 * 56 and gs.sh_degree == 2
    assert np.isfinite(gs.means).all() and (gs.scales > 0).all()
    np.testing.assert_array_equal(np.bincount(gs.view), [42 * 56] * 3)
    np.testing.assert_allclose(np.linalg.norm(gs.rotations, axis=1), 1, atol=1e-5)
    # chunked: the same count, views placed once
    chunked = model.reconstruct(images, process_res=56, infer_gs=True, max_views_per_pass=2, chunk_overlap=1)
    np.testing.assert_array_equal(np.bincount(chunked.gaussians.view), [42 * 56] * 3)
    v = plyfile.PlyData.read(str(write_gaussian_ply(tmp_path / "g.ply", rec)))["vertex"]
    assert v.count == len(gs) and "f_rest_23" in [p.name for p in v.properties]
