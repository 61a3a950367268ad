"""The ``da3-data`` nerfstudio dataparser against a synthetic scene's ground truth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.host
pytest.importorskip("nerfstudio")

from da3_plugins.core import conventions as conv  # noqa: E402
from da3_plugins.core import random_model  # noqa: E402
from da3_plugins.core.reconstruction import SceneFileError  # noqa: E402
from da3_plugins.core.synthetic import make_scene  # noqa: E402
from da3_plugins.nerfstudio.dataparser import DA3DataParserConfig  # noqa: E402


@pytest.fixture(scope="module")
def scene():
    return make_scene(num_views=6, height=84, width=112, seed=2)


def _outputs(tmp_path, data, **kw):
    cfg = DA3DataParserConfig(data=data, cache_dir=tmp_path / "cache", **kw)
    return cfg.setup().get_dataparser_outputs(split="train")


def test_cameras_and_seed_points_match_the_truth(scene, tmp_path):
    path = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32)).save(tmp_path / "scene.npz")
    out = _outputs(tmp_path, path, train_split_fraction=1.0)
    assert len(out.image_filenames) == 6 and all(Path(f).is_file() for f in out.image_filenames)
    c2w = out.cameras.camera_to_worlds.double().numpy()
    # back through the dataparser's transform and scale to the original frame
    t = out.dataparser_transform.double().numpy()
    s = out.dataparser_scale
    t_inv = np.linalg.inv(np.vstack([t, [0, 0, 0, 1]]))
    scaled = conv.as_4x4(c2w)
    scaled[:, :3, 3] /= s
    back = t_inv @ scaled
    truth = conv.opencv_w2c_to_opengl_c2w(scene.extrinsics)
    rel = np.swapaxes(back[:, :3, :3], 1, 2) @ truth[:, :3, :3]
    # rotation angle via atan2 (arccos of the trace is ill-conditioned near 0)
    skew = np.stack([rel[:, 2, 1] - rel[:, 1, 2], rel[:, 0, 2] - rel[:, 2, 0], rel[:, 1, 0] - rel[:, 0, 1]], -1)
    rot_err = np.arctan2(np.linalg.norm(skew, axis=-1) / 2, (np.trace(rel, axis1=1, axis2=2) - 1) / 2)
    assert rot_err.max() < 1e-4
    assert np.abs(back[:, :3, 3] - truth[:, :3, 3]).max() < 1e-4 * scene.extent
    np.testing.assert_allclose(out.cameras.fx.numpy()[:, 0], scene.intrinsics[:, 0, 0], rtol=1e-6)
    # seed points, mapped back, lie on the true surface
    pts = out.metadata["points3D_xyz"].double().numpy()
    orig = (np.concatenate([pts / s, np.ones((len(pts), 1))], 1) @ t_inv.T)[:, :3]
    assert len(pts) > 1000 and scene.distance_to_surface(orig).max() < 1e-4 * scene.extent
    assert out.metadata["points3D_rgb"].dtype.is_floating_point is False
    # depth maps for depth-supervised methods
    d = np.asarray(Image.open(out.metadata["depth_filenames"][0])) * out.metadata["depth_unit_scale_factor"]
    np.testing.assert_allclose(d, scene.depth[0], atol=out.metadata["depth_unit_scale_factor"])


def test_folder_of_photos_runs_da3_once_and_caches(tmp_path):
    model_dir = random_model("da3-small").save_pretrained(tmp_path / "model")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    out = _outputs(tmp_path, photos, model=str(model_dir), device="cpu", process_res=56, train_split_fraction=0.75)
    train = [Path(f).name for f in out.image_filenames]
    assert len(train) == 3
    # intrinsics at the original photo size
    assert int(out.cameras.width[0]) == 80 and int(out.cameras.height[0]) == 60
    caches = list((tmp_path / "cache").glob("*/scene.npz"))
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    evals = DA3DataParserConfig(data=photos, cache_dir=tmp_path / "cache", model=str(model_dir), device="cpu",
                                process_res=56, train_split_fraction=0.75).setup().get_dataparser_outputs("val")
    held_out = [Path(f).name for f in evals.image_filenames]
    assert len(held_out) == 1 and sorted(train + held_out) == ["p0.png", "p1.png", "p2.png", "p3.png"]
    assert caches[0].stat().st_mtime_ns == stamp  # not recomputed


def test_cache_key_holds_the_resolved_precision(tmp_path, monkeypatch):
    """auto is bf16 on one machine and fp32 on another: the cached result says which it used."""
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "p0.png")
    files = [photos / "p0.png"]

    def key(**kw):
        return DA3DataParserConfig(data=photos, device="cpu", **kw).setup()._key(files)

    monkeypatch.setenv("DA3P_CPU_PRECISION", "fp32")
    assert key() == key(precision="fp32") == key(precision="auto")
    monkeypatch.setenv("DA3P_CPU_PRECISION", "bf16")
    assert key() == key(precision="bf16") != key(precision="fp32")


def test_bad_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        _outputs(tmp_path, empty)
    bad = tmp_path / "other.npz"
    np.savez(bad, depth=np.zeros((1, 2, 2)))
    with pytest.raises(SceneFileError, match="other.npz"):
        _outputs(tmp_path, bad)
    with pytest.raises(ValueError, match="no such"):
        _outputs(tmp_path, tmp_path / "missing")


def test_registered_with_nerfstudio():
    res = subprocess.run([str(Path(sys.executable).with_name("ns-train")), "splatfacto", "--help"],
                         capture_output=True, text=True, timeout=300)
    assert "da3-data" in res.stdout + res.stderr


def test_da3_gaussians_and_per_point_seeds(scene, tmp_path):
    from da3_plugins.core.reconstruction import GaussianSet

    rng = np.random.default_rng(0)
    g = 40
    q = rng.normal(size=(g, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gs = GaussianSet(means=scene.sample_surface(g), scales=rng.random((g, 3)) * 0.05 + 0.01, rotations=q,
                     harmonics=rng.normal(size=(g, 3, 9)) * 0.1, opacities=rng.random(g) * 0.9 + 0.05)
    conf = (1 + 4 * rng.random(scene.depth.shape)).astype(np.float32)
    rec = scene.to_reconstruction(conf=conf)
    rec.gaussians = gs
    out = _outputs(tmp_path, rec.save(tmp_path / "gs.npz"), train_split_fraction=1.0)
    meta = out.metadata
    t = np.vstack([out.dataparser_transform.double().numpy(), [0, 0, 0, 1]])
    s = out.dataparser_scale
    means = meta["da3_gaussians"]["means"].double().numpy()
    back = (np.concatenate([means / s, np.ones((g, 1))], 1) @ np.linalg.inv(t).T)[:, :3]
    np.testing.assert_allclose(back, gs.means, atol=1e-5)
    np.testing.assert_allclose(np.exp(meta["da3_gaussians"]["scales"].numpy()), gs.scales * s, rtol=1e-5)
    assert meta["da3_gaussians"]["features_rest"].shape == (g, 8, 3)
    # per seed point: a scale of about a pixel at its depth, an opacity that grows with confidence
    n = len(meta["points3D_xyz"])
    assert meta["da3_points3D_scale"].shape == (n,) and meta["da3_points3D_opacity"].shape == (n,)
    assert 0.05 <= float(meta["da3_points3D_opacity"].min()) and float(meta["da3_points3D_opacity"].max()) <= 0.95
