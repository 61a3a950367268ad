"""Training data loaders: the simple scene-folder format written and read back exactly, COLMAP
models written by an independent writer (pycolmap) and by the project's exporter read back,
sparse depth checked against the synthetic ground truth, every bad input a one-line
ValueError naming the file."""

from __future__ import annotations

import json
import re
import shutil
import struct
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import raises_naming
from da3_plugins.core import conventions as conv
from da3_plugins.core.colmap_io import read_colmap_model
from da3_plugins.core.datasets import (FolderDataset, TrainingSample, find_scene_folders, load_scene_folder,
                                       sample_from_reconstruction, write_scene_folder)
from da3_plugins.core.export import write_colmap
from da3_plugins.core.synthetic import make_scene

H, W = 42, 56
STRIDE = 5  # observed pixels of the pycolmap model: every 5th row and column
SHARED = [[33.5, 13.5]]  # a keypoint of each view (row 13: never on the STRIDE grid) seeing another view's point


@pytest.fixture(scope="module")
def scene():
    return make_scene(num_views=3, height=H, width=W)


@pytest.fixture
def sample(scene):
    return TrainingSample(images=scene.images.copy(), depth=scene.depth.copy(), extrinsics=scene.extrinsics.copy(),
                          intrinsics=scene.intrinsics.copy(), name="room")


def _save_images(folder, scene, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(scene.images[i]).save(folder / name)


# ------------------------------------------------------------------------------ simple format


def test_write_read_exact(sample, tmp_path):
    folder = write_scene_folder(tmp_path / "room", sample)
    assert sorted(p.name for p in folder.iterdir()) == ["cameras.json", "depth", "images"]
    cfg = json.loads((folder / "cameras.json").read_text())
    assert [f["image"] for f in cfg["frames"]] == ["images/000.png", "images/001.png", "images/002.png"]
    assert cfg["frames"][1]["depth"] == "depth/001.npy" and len(cfg["frames"][0]["w2c"]) == 3
    back = load_scene_folder(folder)
    assert back.name == "room"
    np.testing.assert_array_equal(back.images, sample.images)
    np.testing.assert_array_equal(back.depth, sample.depth)
    np.testing.assert_array_equal(back.extrinsics, sample.extrinsics)
    np.testing.assert_array_equal(back.intrinsics, sample.intrinsics)
    assert (back.images.dtype, back.depth.dtype, back.extrinsics.dtype, back.intrinsics.dtype) == (
        np.uint8, np.float32, np.float64, np.float64)
    two = load_scene_folder(folder, max_views=2)
    assert two.num_views == 2
    np.testing.assert_array_equal(two.depth, sample.depth[:2])
    # writing is atomic and refuses to replace unless asked
    with pytest.raises(FileExistsError):
        write_scene_folder(folder, sample)
    sample.depth[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="depth"):
        write_scene_folder(folder, sample, overwrite=True)
    np.testing.assert_array_equal(load_scene_folder(folder).depth, back.depth)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["room"]  # no temporary folder left


def test_png_depth_within_half_a_unit(sample, tmp_path):
    unit = 1e-3
    sample.depth[1, :5] = 0.0  # unknown stays unknown
    folder = write_scene_folder(tmp_path / "png", sample, depth_format="png", depth_unit=unit)
    assert json.loads((folder / "cameras.json").read_text())["depth_unit"] == unit
    with Image.open(folder / "depth" / "000.png") as im:
        assert im.mode.startswith("I;16") or im.mode == "I"
    back = load_scene_folder(folder)
    assert np.abs(back.depth.astype(np.float64) - sample.depth).max() <= unit / 2 + 1e-6  # plus float32 rounding
    assert np.all(back.depth[1, :5] == 0) and np.all(back.depth[1, 5:] > 0)
    with pytest.raises(ValueError, match="16 bits"):
        write_scene_folder(tmp_path / "deep", sample, depth_format="png", depth_unit=1e-5)
    # without a unit the PNG cannot be read
    cfg = json.loads((folder / "cameras.json").read_text())
    del cfg["depth_unit"]
    (folder / "cameras.json").write_text(json.dumps(cfg))
    raises_naming(folder / "depth" / "000.png", load_scene_folder, folder)
    (folder / "depth_units.json").write_text(json.dumps({"unit": unit}))
    np.testing.assert_array_equal(load_scene_folder(folder).depth, back.depth)


def test_hand_written_cameras_json(scene, tmp_path):
    """4x4 poses, JPEG images, a frame without depth, a 16-bit depth PNG, a grey image."""
    folder = tmp_path / "hand"
    (folder / "images").mkdir(parents=True)
    (folder / "depth").mkdir()
    Image.fromarray(scene.images[0]).save(folder / "images" / "a.jpg", quality=95)
    Image.fromarray(scene.images[1][..., 0]).save(folder / "images" / "b.png")  # greyscale
    np.save(folder / "depth" / "a.npy", scene.depth[0].astype(np.float64)[..., None])  # (H, W, 1) float64
    Image.fromarray(np.round(scene.depth[1] / 0.002).astype(np.uint16)).save(folder / "depth" / "b.png")
    frames = [{"image": "images/a.jpg", "K": scene.intrinsics[0].tolist(),
               "w2c": conv.as_4x4(scene.extrinsics[0]).tolist(), "depth": "depth/a.npy"},
              {"image": "images/b.png", "K": scene.intrinsics[1].tolist(), "w2c": scene.extrinsics[1].tolist(),
               "depth": "depth/b.png"},
              {"image": "images/a.jpg", "K": scene.intrinsics[2].tolist(), "w2c": scene.extrinsics[2].tolist()}]
    (folder / "cameras.json").write_text(json.dumps({"frames": frames, "depth_unit": 0.002}))
    s = load_scene_folder(folder)
    assert s.images.shape == (3, H, W, 3) and s.name == "hand"
    assert np.abs(s.images[0].astype(int) - scene.images[0]).mean() < 10  # JPEG
    np.testing.assert_array_equal(s.images[1], np.repeat(scene.images[1][..., :1], 3, -1))
    np.testing.assert_array_equal(s.depth[0], scene.depth[0])
    assert np.abs(s.depth[1] - scene.depth[1]).max() <= 0.001 + 1e-6
    assert not s.depth[2].any()
    np.testing.assert_allclose(s.extrinsics, scene.extrinsics, rtol=0, atol=0)


def test_views_resized_to_the_first(scene, tmp_path):
    """View 1 rendered at twice the size: image bicubic, depth nearest, K scaled exactly."""
    k2 = conv.rescale_intrinsics(scene.intrinsics[1], (H, W), (2 * H, 2 * W))
    img2, depth2 = scene.render_views(scene.extrinsics[1:2], k2[None], 2 * H, 2 * W)
    s = TrainingSample(scene.images[:1], scene.depth[:1], scene.extrinsics[:1], scene.intrinsics[:1])
    folder = write_scene_folder(tmp_path / "mixed", s)
    Image.fromarray(img2[0]).save(folder / "images" / "001.png")
    np.save(folder / "depth" / "001.npy", depth2[0])
    cfg = json.loads((folder / "cameras.json").read_text())
    cfg["frames"].append({"image": "images/001.png", "K": k2.tolist(), "w2c": scene.extrinsics[1].tolist(),
                          "depth": "depth/001.npy"})
    (folder / "cameras.json").write_text(json.dumps(cfg))
    back = load_scene_folder(folder)
    assert back.images.shape == (2, H, W, 3) and back.depth.shape == (2, H, W)
    np.testing.assert_allclose(back.intrinsics[1], scene.intrinsics[1], rtol=1e-15)
    np.testing.assert_array_equal(back.depth[1], depth2[0][1::2, 1::2])  # nearest: the lower-right sample
    assert np.abs(back.images[1].astype(int) - scene.images[1]).mean() < 12
    # a depth map that does not match its own image is an error
    np.save(folder / "depth" / "001.npy", depth2[0][:-1])
    raises_naming(folder / "depth" / "001.npy", load_scene_folder, folder)


def test_from_reconstruction(scene, tmp_path):
    rec = scene.to_reconstruction()
    rec.depth[0, 0, :4] = np.nan
    s = sample_from_reconstruction(rec, conf_threshold=None)
    assert np.all(s.depth[0, 0, :4] == 0)
    np.testing.assert_array_equal(s.depth[1:], scene.depth[1:])
    np.testing.assert_array_equal(s.extrinsics, scene.extrinsics)
    back = load_scene_folder(write_scene_folder(tmp_path / "rec", s))
    np.testing.assert_array_equal(back.depth, s.depth)


# ------------------------------------------------------------------------------ COLMAP via pycolmap


def _observed(i):
    """Pixels (rows, cols) of view i that the pycolmap model observes."""
    rows, cols = np.meshgrid(np.arange(i, H, STRIDE), np.arange(i, W, STRIDE), indexing="ij")
    return rows.ravel(), cols.ravel()


def _pycolmap_model(pycolmap, scene, models=("PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL")):
    """A pycolmap Reconstruction of the synthetic scene: one camera per view (models cycled),
    keypoints at every STRIDE-th pixel centre plus two with no 3-D point and one more, ``SHARED``,
    and one 3-D point per grid keypoint, back-projected with the true depth.  The first point
    of view i is also observed by keypoint SHARED of view i - 1 (tracks of two elements)."""
    rec = pycolmap.Reconstruction()
    c2w = conv.w2c_to_c2w(scene.extrinsics)
    first = []
    for i in range(scene.num_views):
        k = scene.intrinsics[i]
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        model = models[i % len(models)]
        params = {"PINHOLE": [fx, fy, cx, cy], "SIMPLE_PINHOLE": [fx, cx, cy], "SIMPLE_RADIAL": [fx, cx, cy, 0.0],
                  "OPENCV": [fx, fy, cx, cy, 0.01, 0, 0, 0], "OPENCV_FISHEYE": [fx, fy, cx, cy, 0, 0, 0, 0],
                  "OPENCV0": [fx, fy, cx, cy, 0, 0, 0, 0]}[model]
        model = model.rstrip("0")  # OPENCV0: OPENCV without distortion
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=i + 1, model=model, width=W, height=H,
                                                        params=params))
    for i in range(scene.num_views):
        rows, cols = _observed(i)
        uv = np.stack([cols + 0.5, rows + 0.5], 1)
        keypoints = np.concatenate([uv, [[3.25, 4.75], [10.0, 20.0]] + SHARED])
        img = pycolmap.Image(name=f"view_{i}.png", keypoints=keypoints, camera_id=i + 1, image_id=i + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(scene.extrinsics[i, :, :3]), scene.extrinsics[i, :, 3])
        rec.add_image_with_trivial_frame(img, pose)
        rays = np.concatenate([uv, np.ones((len(uv), 1))], 1) @ np.linalg.inv(scene.intrinsics[i]).T
        cam = rays * scene.depth[i, rows, cols].astype(np.float64)[:, None]
        xyz = cam @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        for j in range(len(uv)):
            track = pycolmap.Track()
            track.add_element(i + 1, j)
            pid = rec.add_point3D(xyz[j], track, scene.images[i, rows[j], cols[j]])
            if j == 0:
                first.append(pid)
    for i in range(scene.num_views):
        rec.add_observation(first[(i + 1) % scene.num_views],
                            pycolmap.TrackElement(i + 1, len(_observed(i)[0]) + 2))
    return rec


@pytest.mark.parametrize("binary", [True, False])
def test_pycolmap_model(scene, tmp_path, binary):
    pycolmap = pytest.importorskip("pycolmap")
    rec = _pycolmap_model(pycolmap, scene)
    project = tmp_path / "project"
    sparse = project / "sparse" / "0"
    sparse.mkdir(parents=True)
    rec.write(str(sparse)) if binary else rec.write_text(str(sparse))
    assert (sparse / ("images.bin" if binary else "images.txt")).is_file()
    model = read_colmap_model(sparse)
    assert sorted(model.cameras) == [1, 2, 3] and sorted(model.images) == [1, 2, 3]
    assert [model.cameras[c].model for c in (1, 2, 3)] == ["PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL"]
    total = 0
    for i in range(3):
        im = model.images[i + 1]
        assert im.name == f"view_{i}.png" and im.camera_id == i + 1
        np.testing.assert_allclose(im.world_to_camera(), scene.extrinsics[i], rtol=0, atol=1e-9)
        cam = model.cameras[im.camera_id]
        assert (cam.width, cam.height) == (W, H)
        np.testing.assert_allclose(cam.intrinsics(), scene.intrinsics[i], rtol=1e-15)
        rows, cols = _observed(i)
        np.testing.assert_array_equal(im.xys[:-3], np.stack([cols + 0.5, rows + 0.5], 1))
        np.testing.assert_array_equal(im.xys[-3:], [[3.25, 4.75], [10.0, 20.0]] + SHARED)
        assert np.all(im.point3D_ids[-3:-1] == -1) and np.all(im.point3D_ids[:-3] > 0)
        assert im.point3D_ids[-1] == model.images[(i + 1) % 3 + 1].point3D_ids[0]
        # every observed point, by id, sits at the true depth along its pixel's ray
        xyz = model.points[model.point_rows(im.point3D_ids[:-3])]
        np.testing.assert_array_equal(xyz, [rec.point3D(int(p)).xyz for p in im.point3D_ids[:-3]])
        z = xyz @ scene.extrinsics[i, 2, :3] + scene.extrinsics[i, 2, 3]
        np.testing.assert_allclose(z, scene.depth[i, rows, cols], rtol=1e-6)
        np.testing.assert_array_equal(model.colors[model.point_rows(im.point3D_ids[:-3])], scene.images[i, rows, cols])
        total += len(rows)
    assert len(model.points) == len(model.point_ids) == total == rec.num_points3D()
    assert set(model.point_ids.tolist()) == set(rec.point3D_ids())

    # the same project as training data: images + sparse depth
    _save_images(project / "images", scene, [f"view_{i}.png" for i in range(3)])
    s = load_scene_folder(project)
    assert s.name == "project"
    np.testing.assert_array_equal(s.images, scene.images)
    np.testing.assert_allclose(s.extrinsics, scene.extrinsics, rtol=0, atol=1e-9)
    np.testing.assert_allclose(s.intrinsics, scene.intrinsics, rtol=1e-15)
    for i in range(3):
        rows, cols = _observed(i)
        np.testing.assert_allclose(s.depth[i, rows, cols], scene.depth[i, rows, cols], rtol=1e-6)
        # plus the shared keypoint: the other view's point, at its z in this view
        other = model.points[model.point_rows(model.images[i + 1].point3D_ids[-1:])][0]
        z = other @ scene.extrinsics[i, 2, :3] + scene.extrinsics[i, 2, 3]
        assert z > 0 and s.depth[i, 13, 33] == np.float32(z)
        assert np.count_nonzero(s.depth[i]) == len(rows) + 1

    # a depth/ folder replaces the sparse depth
    (project / "depth").mkdir()
    for i in range(3):
        Image.fromarray(np.round(scene.depth[i] / 1e-3).astype(np.uint16)).save(project / "depth" / f"view_{i}.png")
    raises_naming(project / "depth" / "view_0.png", load_scene_folder, project)  # no unit yet
    (project / "depth" / "depth_units.json").write_text(json.dumps({"unit": 1e-3}))
    dense = load_scene_folder(project, max_views=2)
    assert dense.num_views == 2
    assert np.abs(dense.depth - scene.depth[:2]).max() <= 5e-4 + 1e-6
    (project / "depth" / "view_2.png").unlink()
    raises_naming(project / "depth" / "view_2.npy", load_scene_folder, project)


def test_pycolmap_images_at_another_size(scene, tmp_path):
    """Images stored at half the COLMAP size (as in images_2/): K and the sparse pixels scale."""
    pycolmap = pytest.importorskip("pycolmap")
    project = tmp_path / "half"
    (project / "sparse").mkdir(parents=True)
    _pycolmap_model(pycolmap, scene).write(str(project / "sparse"))  # sparse/ itself, no 0/
    (project / "images").mkdir()
    for i in range(3):
        small = Image.fromarray(scene.images[i]).resize((W // 2, H // 2), Image.BILINEAR)
        small.save(project / "images" / f"view_{i}.png")
    s = load_scene_folder(project)
    assert s.images.shape == (3, H // 2, W // 2, 3)
    np.testing.assert_allclose(s.intrinsics, conv.rescale_intrinsics(scene.intrinsics, (H, W), (H // 2, W // 2)))
    rows, cols = _observed(0)
    np.testing.assert_allclose(s.depth[0, rows // 2, cols // 2], scene.depth[0, rows, cols], rtol=1e-6)
    # a different aspect ratio is an error
    Image.fromarray(scene.images[1][:, :20]).save(project / "images" / "view_1.png")
    raises_naming(project / "images" / "view_1.png", load_scene_folder, project)


def test_camera_models(scene, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    _pycolmap_model(pycolmap, scene, models=("OPENCV", "OPENCV_FISHEYE", "OPENCV0")).write(str(sparse))
    model = read_colmap_model(sparse)
    with pytest.warns(UserWarning, match="OPENCV with non-zero distortion"):
        k = model.cameras[1].intrinsics()
    np.testing.assert_allclose(k, scene.intrinsics[0])
    msg = raises_naming(sparse / "cameras.bin", model.cameras[2].intrinsics)
    assert "OPENCV_FISHEYE" in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.cameras[3].intrinsics()[0, 0] == scene.intrinsics[2, 0, 0]  # OPENCV, zero distortion
    # the loader reads the camera model once per camera and stops at the fisheye one
    shutil.copytree(sparse, tmp_path / "p" / "sparse" / "0")
    (tmp_path / "p" / "images").mkdir()
    with pytest.warns(UserWarning):
        raises_naming(tmp_path / "p" / "sparse" / "0" / "cameras.bin", load_scene_folder, tmp_path / "p")


# ------------------------------------------------------------------------------ the project's COLMAP export


@pytest.mark.parametrize("binary", [True, False])
def test_project_colmap_export(scene, tmp_path, binary):
    rec = scene.to_reconstruction()
    project = tmp_path / "export"
    write_colmap(project / "sparse" / "0", rec, binary=binary, conf_threshold=None, stride=3)
    model = read_colmap_model(project / "sparse" / "0")
    cloud = rec.points(stride=3)
    np.testing.assert_allclose(model.points, cloud.positions, atol=1e-5)
    np.testing.assert_array_equal(model.colors, cloud.colors)
    for i in range(3):
        im = model.images[i + 1]
        assert im.name == f"view_{i:04d}.png"
        np.testing.assert_allclose(im.world_to_camera(), scene.extrinsics[i], atol=1e-9)
        np.testing.assert_allclose(model.cameras[im.camera_id].intrinsics(), scene.intrinsics[i], rtol=1e-15)
    _save_images(project / "images", scene, [f"view_{i:04d}.png" for i in range(3)])
    s = load_scene_folder(project)
    for i in range(3):
        d = s.depth[i]
        np.testing.assert_allclose(d[::3, ::3], scene.depth[i, ::3, ::3], rtol=1e-5)
        assert np.count_nonzero(d) == d[::3, ::3].size


# ------------------------------------------------------------------------------ finding scenes


def test_folder_dataset(sample, scene, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    root = tmp_path / "root"
    write_scene_folder(root / "a" / "s1", sample)
    colmap = root / "b" / "c" / "s2"
    (colmap / "sparse" / "0").mkdir(parents=True)
    _pycolmap_model(pycolmap, scene).write_text(str(colmap / "sparse" / "0"))
    _save_images(colmap / "images", scene, [f"view_{i}.png" for i in range(3)])
    (root / ".s3.partial" / "images").mkdir(parents=True)  # an unfinished write: skipped
    (root / ".s3.partial" / "cameras.json").write_text("{}")
    (root / "empty").mkdir()
    (root / "b" / "loop").symlink_to(root / "b")  # followed once, no endless walk
    ds = FolderDataset(root, max_views=2)
    assert len(ds) == 2 and ds.names == ["a/s1", "b/c/s2"]
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "kitchen").symlink_to(root / "a" / "s1")
    assert FolderDataset(tmp_path / "links").names == ["kitchen"]
    s1, s2 = ds[0], ds[-1]
    assert (s1.name, s2.name) == ("a/s1", "b/c/s2") and s1.num_views == s2.num_views == 2
    np.testing.assert_array_equal(s1.depth, sample.depth[:2])
    np.testing.assert_allclose(s2.extrinsics, scene.extrinsics[:2], atol=1e-9)
    with pytest.raises(IndexError):
        ds[2]
    # the root may be a scene itself; its sub-folders are not searched
    one = FolderDataset(root / "a" / "s1")
    assert len(one) == 1 and one.names == ["s1"] and one[0].name == "s1"
    assert find_scene_folders(root / "b") == [colmap]
    raises_naming(root / "empty", FolderDataset, root / "empty")
    raises_naming(root / "nothing", FolderDataset, root / "nothing")
    with pytest.raises(ValueError, match="max_views"):
        FolderDataset(root, max_views=0)


# ------------------------------------------------------------------------------ bad input


def test_bad_scene_folders(sample, tmp_path):
    folder = write_scene_folder(tmp_path / "s", sample)
    cams = folder / "cameras.json"
    good = cams.read_text()

    def edit(fn):
        cfg = json.loads(good)
        fn(cfg)
        cams.write_text(json.dumps(cfg))

    (folder / "images" / "001.png").rename(folder / "images" / "x.png")
    raises_naming(folder / "images" / "001.png", load_scene_folder, folder)
    (folder / "images" / "x.png").write_bytes(b"not a png")
    edit(lambda c: c["frames"][1].update(image="images/x.png"))
    raises_naming(folder / "images" / "x.png", load_scene_folder, folder)
    Image.fromarray(sample.images[1]).save(folder / "images" / "001.png")
    cams.write_text(good)
    for bad in (np.full((H, W), np.nan, np.float32), -np.ones((H, W), np.float32), np.ones((H, W + 1), np.float32),
                np.ones((2, H, W), np.float32)):
        np.save(folder / "depth" / "002.npy", bad)
        raises_naming(folder / "depth" / "002.npy", load_scene_folder, folder)
    np.save(folder / "depth" / "002.npy", sample.depth[2])
    (folder / "depth" / "000.npy").write_bytes(b"garbage")
    raises_naming(folder / "depth" / "000.npy", load_scene_folder, folder)
    np.save(folder / "depth" / "000.npy", sample.depth[0])
    Image.fromarray(np.zeros((H, W), np.uint8)).save(folder / "depth" / "8bit.png")
    Image.fromarray(np.ones((H, W), np.uint16)).save(folder / "depth" / "16bit.png")
    edit(lambda c: c["frames"][0].update(depth="depth/8bit.png"))
    raises_naming(folder / "depth" / "8bit.png", load_scene_folder, folder)
    # cameras.json itself
    for fn in (lambda c: c["frames"][0].update(K=[[1, 0], [0, 1]]),
               lambda c: c["frames"][0].update(w2c=np.eye(3, 4) * 2),
               lambda c: c["frames"][0].pop("w2c"),
               lambda c: c.update(frames=[]),
               lambda c: c.update(depth_unit=-1.0) or c["frames"][0].update(depth="depth/16bit.png")):
        cfg = json.loads(good)
        fn(cfg)
        cams.write_text(json.dumps(cfg, default=lambda a: a.tolist()))
        raises_naming(cams, load_scene_folder, folder)
    cams.write_text("{not json")
    raises_naming(cams, load_scene_folder, folder)
    cams.write_text(json.dumps({"depth_unit": 0.001}))  # no frames and no COLMAP model
    raises_naming(cams, load_scene_folder, folder)
    with pytest.raises(ValueError, match="max_views"):
        load_scene_folder(folder, max_views=0)


def test_bad_colmap_models(scene, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    rec = _pycolmap_model(pycolmap, scene)
    good_bin, good_txt = tmp_path / "bin", tmp_path / "txt"
    good_bin.mkdir(), good_txt.mkdir()
    rec.write(str(good_bin))
    rec.write_text(str(good_txt))

    def broken(src, name, change):
        folder = tmp_path / f"bad_{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, folder)
        change(folder / name)
        return folder / name

    def truncate(n):
        return lambda f: f.write_bytes(f.read_bytes()[:n])

    def bin_camera_model(f):  # first camera's model id -> 99
        data = bytearray(f.read_bytes())
        data[12:16] = struct.pack("<i", 99)
        f.write_bytes(bytes(data))

    cases = [
        broken(good_bin, "images.bin", lambda f: f.unlink()),
        broken(good_txt, "points3D.txt", lambda f: f.unlink()),
        broken(good_bin, "points3D.bin", truncate(-7)),
        broken(good_bin, "images.bin", truncate(100)),
        broken(good_bin, "cameras.bin", truncate(3)),
        broken(good_bin, "cameras.bin", lambda f: f.write_bytes(f.read_bytes() + b"\x00")),
        broken(good_bin, "cameras.bin", bin_camera_model),
        broken(good_txt, "cameras.txt", lambda f: f.write_text(f.read_text().replace("SIMPLE_PINHOLE", "PINHOLE_X"))),
        broken(good_txt, "cameras.txt", lambda f: f.write_text(f.read_text().replace(" PINHOLE 56 42", " PINHOLE 56"))),
        broken(good_txt, "images.txt", lambda f: f.write_text(re.sub(r"(?m)^1 (\S+ ){7}1 ", "1 1 0 0 0 0 0 0 9 ",
                                                                     f.read_text()))),
        broken(good_txt, "images.txt", lambda f: f.write_text(f.read_text().replace("view_1.png", "view_1.png\n1 2"))),
        broken(good_txt, "points3D.txt", lambda f: f.write_text(f.read_text() + "7 1 2 x 0 0 0 0\n")),
    ]
    for path in cases:
        raises_naming(path, read_colmap_model, path.parent)
    # the loader passes them through, naming the same file
    project = tmp_path / "project"
    shutil.copytree(cases[2].parent, project / "sparse" / "0")
    _save_images(project / "images", scene, [f"view_{i}.png" for i in range(3)])
    raises_naming(project / "sparse" / "0" / "points3D.bin", load_scene_folder, project)
    shutil.rmtree(project / "sparse" / "0")
    shutil.copytree(good_bin, project / "sparse" / "0")
    (project / "images" / "view_1.png").unlink()
    raises_naming(project / "images" / "view_1.png", load_scene_folder, project)
