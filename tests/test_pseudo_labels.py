"""Teacher pseudo-labels at dataset scale (issue 16): the ``depth`` export is a training-data
scene folder read back exactly (depth, K, poses, conf < min_conf unknown), a batch output
folder is found scene by scene, the loader's conf / min_conf, a scene folder's inputs
(simple and COLMAP), the measured depth carried onto the processed pixel grid (resize and
crop, nearest, sparse points kept), and the RANSAC alignment of a reconstruction to sparse
noisy metric depth (exact synthetic teacher and the embedded model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import raises_naming
from da3_plugins.core.datasets import (FolderDataset, TrainingSample, find_scene_folders, load_scene_folder,
                                       sample_from_reconstruction, write_scene_folder)
from da3_plugins.core.export import write_colmap, write_depth_images
from da3_plugins.core.export.registry import write_exports
from da3_plugins.core.preprocess import process_image, process_images
from da3_plugins.core.pseudo_labels import SceneInputs, align_to_measured, measured_to_processed, scene_inputs
from da3_plugins.core.reconstruction import Reconstruction
from da3_plugins.core.synthetic import make_scene
from da3_plugins.core.training.data import pseudo_label_depth

H0, W0 = 126, 168  # the "photos"
RES, METHOD = 140, "upper_bound_crop"  # processed 98 x 140: a downscale and a 3-row crop
TRUE_SCALE = 2.5  # the measured depth is the true depth times this


@pytest.fixture(scope="module")
def scene():
    """An open room (background pixels: depth 0, sky), 4 views of 126 x 168."""
    return make_scene("room", num_views=4, height=H0, width=W0, seed=3, closed=False)


@pytest.fixture(scope="module")
def closed_scene():
    return make_scene("room", num_views=4, height=H0, width=W0, seed=3)


def _processed_rec(scene, scale=1 / 3, noise=0.0, seed=0):
    """A Reconstruction of ``scene`` at the processed grid of (RES, METHOD): the exact depth
    rendered there (times ``scale``, with relative noise), K = T K0, the real transforms."""
    pixels, transforms = process_images(list(scene.images), RES, METHOD)
    h, w = pixels.shape[1:3]
    ks = transforms @ scene.intrinsics
    _, true = scene.render_views(scene.extrinsics, ks, h, w)
    rng = np.random.default_rng(seed)
    depth = (true * scale * (1 + noise * rng.standard_normal(true.shape))).astype(np.float32)
    conf = (1 + 4 * rng.random(true.shape)).astype(np.float32)
    sky = ~(true > 0)
    return Reconstruction(images=pixels, depth=depth, extrinsics=scene.extrinsics, intrinsics=ks, conf=conf,
                          original_sizes=np.tile([[H0, W0]], (len(pixels), 1)), pixel_transform=transforms,
                          image_names=[f"img{i}.jpg" for i in range(len(pixels))], sky=sky if sky.any() else None), true


def _sparse_measured(depth, fraction=0.02, noise=0.01, seed=1):
    rng = np.random.default_rng(seed)
    keep = (rng.random(depth.shape) < fraction) & (depth > 0)
    noisy = TRUE_SCALE * depth * (1 + noise * rng.standard_normal(depth.shape))
    return np.where(keep, noisy, 0).astype(np.float32)


def _expected_labels(rec, folder_cfg):
    """The depth the loader must give for ``rec``'s depth export."""
    valid = rec.valid_mask(folder_cfg["min_conf"], drop_sky=True)
    return np.where(valid, rec.depth, 0).astype(np.float32)


# ------------------------------------------------------------------------------ the depth export


def test_depth_export_is_a_training_scene(scene, tmp_path):
    rec, _ = _processed_rec(scene)
    rec.depth[0, 0, :4] = [np.nan, -1.0, 0.0, np.inf]
    rec.conf[1, 5, 5] = np.nan
    assert rec.sky is not None and rec.sky.any()
    folder = write_depth_images(tmp_path / "depth", rec)
    cfg = json.loads((folder / "cameras.json").read_text())
    assert cfg["min_conf"] == rec.default_conf_threshold() > 1.05
    assert [f["image"] for f in cfg["frames"]] == [f"images/img{i}.jpg.png" for i in range(4)]
    assert cfg["frames"][2] == {"image": "images/img2.jpg.png", "K": rec.intrinsics[2].tolist(),
                                "w2c": rec.extrinsics[2].tolist(), "depth": "img2.jpg_depth.npy",
                                "conf": "img2.jpg_conf.npy"}
    raw = np.load(folder / "img0.jpg_depth.npy")
    assert raw.dtype == np.float32 and raw.shape == (rec.height, rec.width)
    assert (raw[0, :4] == 0).all() and (raw[rec.sky[0]] == 0).all()
    ok = rec.valid_mask(None)[0]
    np.testing.assert_array_equal(raw[ok], rec.depth[0][ok])
    conf1 = np.load(folder / "img1.jpg_conf.npy")
    assert conf1[5, 5] == 0 and np.array_equal(np.delete(conf1.ravel(), 5 * rec.width + 5),
                                               np.delete(rec.conf[1].ravel(), 5 * rec.width + 5))
    s = load_scene_folder(folder)
    np.testing.assert_array_equal(s.images, rec.images)
    np.testing.assert_array_equal(s.intrinsics, rec.intrinsics)
    np.testing.assert_array_equal(s.extrinsics, rec.extrinsics)
    np.testing.assert_array_equal(s.depth, _expected_labels(rec, cfg))
    np.testing.assert_array_equal(s.depth, sample_from_reconstruction(rec, "auto").depth)  # the scene.npz route
    low = rec.conf < cfg["min_conf"]
    assert low.mean() > 0.01 and (s.depth[low] == 0).all() and (s.depth[~low & rec.valid_mask(None)] > 0).all()
    # the same through FolderDataset, and from a folder scene (memory maps): the same files
    assert FolderDataset(folder).names == ["depth"]
    mm = Reconstruction.load(rec.save(tmp_path / "scene", form="folder"))
    again = write_depth_images(tmp_path / "again", mm)
    for f in folder.rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (again / f.relative_to(folder)).read_bytes(), f.name


def test_depth_export_without_confidence(closed_scene, tmp_path):
    rec = closed_scene.to_reconstruction()
    assert rec.conf is None and rec.sky is None
    folder = write_depth_images(tmp_path / "d", rec, colour=False, raw16=False, preview=False)
    assert sorted(p.name for p in folder.iterdir()) == ["cameras.json", "images"] + [
        f"view_{i:04d}_depth.npy" for i in range(4)]
    cfg = json.loads((folder / "cameras.json").read_text())
    assert cfg["min_conf"] is None and all("conf" not in f for f in cfg["frames"])
    s = load_scene_folder(folder)
    np.testing.assert_array_equal(s.depth, rec.depth)
    np.testing.assert_array_equal(s.extrinsics, rec.extrinsics)


def test_a_batch_output_folder_is_found_scene_by_scene(scene, closed_scene, tmp_path):
    out = tmp_path / "OUT"
    for name, sc in (("kitchen", scene), ("office", closed_scene)):
        rec, _ = _processed_rec(sc)
        write_exports(rec, out / name, ("scene", "ply", "colmap", "nerfstudio", "depth"), conf_threshold=None)
    (out / "kitchen" / ".kitchen.da3p-work" / "images").mkdir(parents=True)  # a cache: hidden, not searched
    (out / "kitchen" / ".kitchen.da3p-work" / "cameras.json").write_text("{}")
    assert not (out / "kitchen" / "cameras.json").exists()
    assert find_scene_folders(out) == [out / "kitchen" / "depth", out / "office" / "depth"]
    ds = FolderDataset(out)
    assert ds.names == ["kitchen/depth", "office/depth"]
    assert ds[1].num_views == 4 and ds[1].depth.shape == (4, 98, 140)


# ------------------------------------------------------------------------------ the loader's conf / min_conf


def test_loader_conf_and_min_conf(scene, tmp_path):
    sample = TrainingSample(scene.images.copy(), scene.depth.copy(), scene.extrinsics.copy(),
                            scene.intrinsics.copy())
    folder = write_scene_folder(tmp_path / "s", sample)
    cams = folder / "cameras.json"
    cfg = json.loads(cams.read_text())
    rng = np.random.default_rng(0)
    conf = rng.random((4, H0, W0)).astype(np.float32)
    for i in range(4):
        np.save(folder / "depth" / f"c{i}.npy", conf[i][..., None] if i == 3 else conf[i])  # (H, W, 1) too
        cfg["frames"][i]["conf"] = f"depth/c{i}.npy"
    cfg["frames"][2]["conf"] = None  # no confidence: kept whole
    cams.write_text(json.dumps(cfg))
    np.testing.assert_array_equal(load_scene_folder(folder).depth, scene.depth)  # no min_conf: no effect
    cfg["min_conf"] = 0.5
    cams.write_text(json.dumps(cfg))
    d = load_scene_folder(folder).depth
    expected = np.where(conf < 0.5, 0, scene.depth)
    expected[2] = scene.depth[2]
    np.testing.assert_array_equal(d, expected)
    cfg["min_conf"] = None
    cams.write_text(json.dumps(cfg))
    np.testing.assert_array_equal(load_scene_folder(folder).depth, scene.depth)
    # bad input: one line naming the file
    good = dict(cfg, min_conf=0.5)
    for value in ("high", True, [1]):
        cams.write_text(json.dumps(dict(good, min_conf=value)))
        assert "min_conf" in raises_naming(cams, load_scene_folder, folder)
    bad_frames = json.loads(json.dumps(good))
    bad_frames["frames"][0]["conf"] = 3
    cams.write_text(json.dumps(bad_frames))
    assert "conf" in raises_naming(cams, load_scene_folder, folder)
    cams.write_text(json.dumps(good))
    for bad in (np.ones((H0, W0 + 1), np.float32), np.full((H0, W0), np.nan, np.float32),
                np.ones((2, H0, W0), np.float32)):
        np.save(folder / "depth" / "c1.npy", bad)
        raises_naming(folder / "depth" / "c1.npy", load_scene_folder, folder)
    (folder / "depth" / "c1.npy").unlink()
    raises_naming(folder / "depth" / "c1.npy", load_scene_folder, folder)
    (folder / "depth" / "c1.npy").write_bytes(b"garbage")
    raises_naming(folder / "depth" / "c1.npy", load_scene_folder, folder)


# ------------------------------------------------------------------------------ scene inputs


def test_scene_inputs_simple_format(scene, tmp_path):
    measured = _sparse_measured(scene.depth)
    measured[1] = 0
    sample = TrainingSample(scene.images.copy(), measured, scene.extrinsics.copy(), scene.intrinsics.copy())
    folder = write_scene_folder(tmp_path / "s", sample)
    cfg = json.loads((folder / "cameras.json").read_text())
    cfg["frames"][1].pop("depth")  # a view without depth: all unknown
    (folder / "cameras.json").write_text(json.dumps(cfg))
    inputs = scene_inputs(folder)
    assert isinstance(inputs, SceneInputs) and inputs.num_views == 4
    assert inputs.images == tuple(str(folder / "images" / f"{i:03d}.png") for i in range(4))
    assert inputs.extrinsics.shape == (4, 4, 4) and inputs.extrinsics.dtype == np.float64
    np.testing.assert_array_equal(inputs.extrinsics[:, :3], scene.extrinsics)
    np.testing.assert_array_equal(inputs.extrinsics[:, 3], np.tile([0, 0, 0, 1.0], (4, 1)))
    np.testing.assert_array_equal(inputs.intrinsics, scene.intrinsics)
    assert inputs.measured.dtype == np.float32
    np.testing.assert_array_equal(inputs.measured, measured)
    np.testing.assert_array_equal(inputs.measured, load_scene_folder(folder).depth)
    # no depth at all: None
    for fr in cfg["frames"]:
        fr.pop("depth", None)
    (folder / "cameras.json").write_text(json.dumps(cfg))
    assert scene_inputs(folder).measured is None
    # images of different sizes: K per file, measured per view
    small = np.asarray(Image.fromarray(scene.images[2]).resize((W0 // 2, H0 // 2)))
    Image.fromarray(small).save(folder / "images" / "002.png")
    cfg["frames"][2]["K"] = (np.diag([0.5, 0.5, 1.0]) @ scene.intrinsics[2]).tolist()
    np.save(folder / "depth" / "002.npy", measured[2][::2, ::2])
    cfg["frames"][2]["depth"] = "depth/002.npy"
    (folder / "cameras.json").write_text(json.dumps(cfg))
    inputs = scene_inputs(folder)
    assert isinstance(inputs.measured, tuple) and [m.shape for m in inputs.measured] == [
        (H0, W0), (H0, W0), (H0 // 2, W0 // 2), (H0, W0)]
    assert not inputs.measured[0].any()
    np.testing.assert_array_equal(inputs.measured[2], measured[2][::2, ::2])
    np.testing.assert_allclose(inputs.intrinsics[2], np.diag([0.5, 0.5, 1.0]) @ scene.intrinsics[2])
    # errors name the file, as the loader's
    (folder / "images" / "003.png").unlink()
    raises_naming(folder / "images" / "003.png", scene_inputs, folder)
    Image.fromarray(scene.images[3]).save(folder / "images" / "003.png")
    np.save(folder / "depth" / "002.npy", measured[2])
    raises_naming(folder / "depth" / "002.npy", scene_inputs, folder)
    raises_naming(tmp_path / "nothing", scene_inputs, tmp_path / "nothing")
    # an EXIF-rotated photo would be turned upright by the reconstruction: refused
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(small).save(folder / "images" / "002.jpg", exif=exif)
    cfg["frames"][2]["image"] = "images/002.jpg"
    cfg["frames"][2].pop("depth")
    (folder / "cameras.json").write_text(json.dumps(cfg))
    assert "EXIF orientation 6" in raises_naming(folder / "images" / "002.jpg", scene_inputs, folder)


def test_scene_inputs_colmap(closed_scene, tmp_path):
    rec = closed_scene.to_reconstruction()
    project = tmp_path / "project"
    write_colmap(project / "sparse" / "0", rec, conf_threshold=None, stride=3)
    (project / "images").mkdir()
    for i in range(4):
        Image.fromarray(closed_scene.images[i]).save(project / "images" / f"view_{i:04d}.png")
    inputs = scene_inputs(project)
    assert [p.rsplit("/", 1)[1] for p in inputs.images] == [f"view_{i:04d}.png" for i in range(4)]
    np.testing.assert_allclose(inputs.extrinsics[:, :3], closed_scene.extrinsics, atol=1e-9)
    np.testing.assert_allclose(inputs.intrinsics, closed_scene.intrinsics, rtol=1e-12)
    loaded = load_scene_folder(project)
    np.testing.assert_array_equal(inputs.measured, loaded.depth)  # the sparse points, as the loader splats them
    assert 0 < np.count_nonzero(inputs.measured) <= inputs.measured.size / 9 + 4 * (W0 + H0)


# ------------------------------------------------------------------------------ processed grid


@pytest.mark.parametrize("size, res, method", [((126, 168), 140, "upper_bound_crop"), ((126, 168), 140,
                                                "upper_bound_resize"), ((50, 71), 140, "lower_bound_crop"),
                                               ((300, 200), 98, "lower_bound_resize")])
def test_measured_to_processed_takes_the_pixel_under_each_centre(size, res, method):
    h0, w0 = size
    index = (1 + np.arange(h0 * w0, dtype=np.float64)).reshape(h0, w0)  # each original pixel's id
    done = process_image(np.zeros((h0, w0, 3), np.uint8), res, method)
    h, w = done.pixels.shape[:2]
    t = done.transform
    got = measured_to_processed(index, t, (h, w))
    # brute force, one pixel at a time: the original pixel containing the processed centre
    inv = np.linalg.inv(t)
    for r in range(0, h, 7):
        for c in range(0, w, 5):
            x, y, _ = inv @ np.array([c + 0.5, r + 0.5, 1.0])
            assert got[r, c] == np.float32(index[int(np.floor(y)), int(np.floor(x))]), (r, c)
    # sparse depth survives a downscale: every known pixel lands where its centre maps
    sparse = np.zeros((h0, w0))
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, h0, 12), rng.integers(0, w0, 12)
    sparse[rows, cols] = 1 + np.arange(12)
    got = measured_to_processed(sparse, t, (h, w))
    for k, (r, c) in enumerate(zip(rows, cols)):
        q = t @ np.array([c + 0.5, r + 0.5, 1.0])
        pr, pc = int(np.floor(q[1])), int(np.floor(q[0]))
        if 0 <= pr < h and 0 <= pc < w and sparse[r, c] == 1 + k:  # (not cropped away, not overwritten)
            assert got[pr, pc] > 0
    assert set(np.unique(got[got > 0])) <= set(1 + np.arange(12.0))
    if t[0, 0] < 1:  # a downscale: nearly all the points are kept, none blended
        assert np.count_nonzero(got) >= 10


# ------------------------------------------------------------------------------ alignment


def test_align_recovers_the_scale_of_sparse_metric_depth(scene, tmp_path):
    rec, true = _processed_rec(scene, scale=1 / 3, noise=0.003)
    measured = _sparse_measured(scene.depth)
    measured[3] = 0  # a view without measurements: unknown in the labels
    before = rec.depth.copy()
    aligned, stats = align_to_measured(rec, measured)
    np.testing.assert_array_equal(rec.depth, before)  # the input is not changed
    assert stats["views"] == 4 and stats["aligned"] == 3
    assert stats["median_abs_rel"] < 0.01 and abs(stats["median_scale"] / (3 * TRUE_SCALE) - 1) < 0.01
    assert stats["per_view"][3] == {"points": 0, "scale": None, "shift": None, "abs_rel": None}
    assert all(p["points"] > 100 for p in stats["per_view"][:3])
    ok = true[:3] > 0
    err = np.abs(aligned.depth[:3][ok] / (TRUE_SCALE * true[:3][ok]) - 1)
    print(f"exact teacher, 2% of pixels at 1% noise: median |aligned / true - 1| = {np.median(err):.2e}")
    assert np.median(err) < 0.005
    assert (aligned.depth[3] == 0).all() and np.isnan(aligned.conf[3]).all()  # unknown, left out of "auto"
    # the aligned depth is pseudo_label_depth's on the processed grid (sky and invalid left out)
    grid = np.stack([measured_to_processed(measured[i], rec.pixel_transform[i], (rec.height, rec.width))
                     for i in range(4)])
    labels = pseudo_label_depth(rec.depth, np.where(rec.valid_mask(None), grid, 0))
    np.testing.assert_array_equal(aligned.depth[:3], labels[:3])
    np.testing.assert_array_equal(aligned.conf[:3], rec.conf[:3])
    for f in ("images", "extrinsics", "intrinsics", "sky", "pixel_transform", "original_sizes"):
        np.testing.assert_array_equal(getattr(aligned, f), getattr(rec, f))
    assert aligned.image_names == rec.image_names and aligned.options == rec.options
    # the depth export of the aligned reconstruction reads back
    folder = write_depth_images(tmp_path / "depth", aligned)
    cfg = json.loads((folder / "cameras.json").read_text())
    s = load_scene_folder(folder)
    np.testing.assert_array_equal(s.depth, _expected_labels(aligned, cfg))
    assert (s.depth[3] == 0).all() and np.count_nonzero(s.depth[:3]) > 0.3 * s.depth[:3].size
    # a list of views is accepted too, with the same result
    again, _ = align_to_measured(rec, list(measured))
    np.testing.assert_array_equal(again.depth, aligned.depth)


def test_align_errors(scene):
    rec, _ = _processed_rec(scene)
    good = np.zeros((4, H0, W0), np.float32)
    for bad in (good[:3], good[:, :, :-1], good[0], np.zeros((4, 98, 140), np.float32)):
        msg = raises_naming("measured", align_to_measured, rec, bad)
        assert "(4, 126, 168)" in msg
    raises_naming("measured", align_to_measured, rec, list(good[:3]))
    raises_naming("measured[2]", align_to_measured, rec, [good[0], good[1], good[2][:-1], good[3]])
    raises_naming("min_points", align_to_measured, rec, good, min_points=0)
    _, stats = align_to_measured(rec, good)  # nothing measured: nothing aligned, no error
    assert stats["aligned"] == 0 and stats["median_abs_rel"] is None


@pytest.fixture(scope="module")
def embedded():
    from da3_plugins.core import load_model

    return load_model("embedded", device="cpu")


def test_embedded_teacher_aligned_to_a_scene_folder(embedded, closed_scene, tmp_path):
    """The batch route: a scene folder with sparse noisy metric depth -> its inputs -> the
    teacher's reconstruction -> aligned -> a depth export that trains."""
    measured = _sparse_measured(closed_scene.depth)
    sample = TrainingSample(closed_scene.images.copy(), measured, closed_scene.extrinsics.copy(),
                            closed_scene.intrinsics.copy())
    inputs = scene_inputs(write_scene_folder(tmp_path / "ROOT" / "room", sample))
    rec = embedded.reconstruct(list(inputs.images), process_res=RES, process_res_method=METHOD)
    assert rec.depth.shape == (4, 98, 140) and rec.pixel_transform[0, 1, 2] == -3  # downscaled and cropped
    aligned, stats = align_to_measured(rec, inputs.measured)
    assert stats["aligned"] == 4
    ks, h, w = rec.pixel_transform @ closed_scene.intrinsics, rec.height, rec.width
    _, true = closed_scene.render_views(closed_scene.extrinsics, ks, h, w)
    err = np.abs(aligned.depth / (TRUE_SCALE * true) - 1)
    print(f"embedded teacher, 2% of pixels at 1% noise: median |aligned / true - 1| = {np.median(err):.3f}, "
          f"fit median |rel| = {stats['median_abs_rel']:.3f}")
    assert np.median(err) < 0.12 and stats["median_abs_rel"] < 0.12
    folder = write_depth_images(tmp_path / "OUT" / "room" / "depth", aligned)
    ds = FolderDataset(tmp_path / "OUT")
    assert ds.names == ["room/depth"]
    s = ds[0]
    np.testing.assert_array_equal(s.depth, _expected_labels(aligned, json.loads((folder / "cameras.json").read_text())))
    np.testing.assert_array_equal(s.extrinsics, rec.extrinsics)
