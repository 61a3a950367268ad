"""The folder and video exports read back by independent readers: COLMAP by pycolmap, the
nerfstudio folder by nerfstudio's own dataparser, the video by OpenCV."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import conventions as conv
from da3_plugins.core.export import write_colmap, write_nerfstudio
from da3_plugins.core.reconstruction import GaussianSet

from export_scene import H, W, _assert_unchanged, _snapshot, rec  # noqa: F401  (rec is a fixture)


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_pycolmap(rec, tmp_path, binary):
    pycolmap = pytest.importorskip("pycolmap")
    before = _snapshot(rec)
    folder = write_colmap(tmp_path / "sparse", rec, binary=binary, conf_threshold=None, stride=3)
    _assert_unchanged(rec, before)
    suffix = ".bin" if binary else ".txt"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}{suffix}" for n in ("cameras", "images", "points3D"))
    model = pycolmap.Reconstruction(str(folder))
    assert model.num_images() == 3 and model.num_cameras() == 3
    k_orig = rec.intrinsics_original
    for i in range(3):
        img = model.image(i + 1)
        assert img.name == f"{rec.image_names[i]}.png"
        cam = model.camera(img.camera_id)
        h, w = rec.original_sizes[i]
        assert (cam.width, cam.height) == (w, h) and cam.model.name == "PINHOLE"
        np.testing.assert_allclose(cam.params, [k_orig[i, 0, 0], k_orig[i, 1, 1], k_orig[i, 0, 2], k_orig[i, 1, 2]],
                                   rtol=1e-12)
        pose = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        np.testing.assert_allclose(pose.rotation.matrix(), rec.extrinsics[i, :, :3], atol=1e-6)
        np.testing.assert_allclose(pose.translation, rec.extrinsics[i, :, 3], atol=1e-6)
        # every point reprojects onto its stored 2-D observation (original pixel coordinates),
        # by our K and by COLMAP's own camera model
        p2ds = list(img.points2D)
        assert len(p2ds) == len(range(0, H, 3)) * len(range(0, W, 3))
        xyz = np.array([model.point3D(p.point3D_id).xyz for p in p2ds])
        xy = np.array([p.xy for p in p2ds])
        cam_pts = xyz @ rec.extrinsics[i, :, :3].T + rec.extrinsics[i, :, 3]
        uv = cam_pts @ k_orig[i].T
        np.testing.assert_allclose(uv[:, :2] / uv[:, 2:], xy, atol=1e-6)
        np.testing.assert_allclose(np.array([cam.img_from_cam(c) for c in cam_pts[:20]]), xy[:20], atol=1e-6)
        # the processed pixel centres of the strided grid, mapped to the original image
        u, v = conv.pixel_centres(H, W)
        grid = np.stack([u[::3, ::3].ravel(), v[::3, ::3].ravel(), np.ones(u[::3, ::3].size)], -1)
        np.testing.assert_allclose(xy, (grid @ np.linalg.inv(rec.pixel_transform[i]).T)[:, :2], atol=1e-9)
        # tracks point back at the observation
        for j, p in enumerate(p2ds[:10]):
            (el,) = model.point3D(p.point3D_id).track.elements
            assert (el.image_id, el.point2D_idx) == (i + 1, j)
    cloud = rec.points(stride=3)
    assert model.num_points3D() == len(cloud)
    ids = sorted(model.point3D_ids())
    xyz = np.array([model.point3D(j).xyz for j in ids])
    np.testing.assert_allclose(xyz, cloud.positions, atol=1e-5)
    np.testing.assert_array_equal(np.array([model.point3D(j).color for j in ids]), cloud.colors)
    # COLMAP's own reprojection error
    model.update_point_3d_errors()
    assert model.compute_mean_reprojection_error() < 1e-6


def test_colmap_folder_handling(rec, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    folder = write_colmap(tmp_path / "sparse", rec, conf_threshold=None, stride=6)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_colmap(folder, rec, conf_threshold=None, stride=6)
    rec.options = rec.options.replace(image_files=("IMG_1.JPG", "IMG_2.JPG", "IMG_3.JPG"))
    write_colmap(folder, rec, conf_threshold=None, stride=8, overwrite=True)
    model = pycolmap.Reconstruction(str(folder))
    assert model.image(2).name == "IMG_2.JPG"
    assert model.num_points3D() == 3 * len(range(0, H, 8)) * len(range(0, W, 8))
    # the official confidence rule keeps fewer points; max_points caps them, seeded
    auto = pycolmap.Reconstruction(str(write_colmap(tmp_path / "auto", rec, stride=1)))
    assert auto.num_points3D() == int((rec.conf >= rec.default_conf_threshold()).sum())
    capped = pycolmap.Reconstruction(str(write_colmap(tmp_path / "cap", rec, stride=1, max_points=100)))
    assert capped.num_points3D() == 100
    with pytest.raises(ValueError, match="conf_threshold"):
        write_colmap(tmp_path / "none", rec, conf_threshold=100.0)
    with pytest.raises(ValueError, match="conf_threshold"):
        write_colmap(tmp_path / "none", rec, conf_threshold="high")
    rec.options = rec.options.replace(image_files=("my photo.jpg", "b.jpg", "c.jpg"))
    with pytest.raises(ValueError, match="white space"):
        write_colmap(tmp_path / "none", rec, binary=False)
    assert not (tmp_path / "none").exists()
    assert pycolmap.Reconstruction(str(write_colmap(tmp_path / "spaced", rec))).image(1).name == "my photo.jpg"


# ------------------------------------------------------------------------------ nerfstudio


@pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")  # inside nerfstudio's ray code
@pytest.mark.host
def test_nerfstudio_dataparser(rec, tmp_path):
    pytest.importorskip("nerfstudio")
    pytest.importorskip("open3d")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path

    rec.sky = np.zeros((3, H, W), bool)
    rec.sky[0, :3] = True  # sky: no depth, no seed points
    before = _snapshot(rec)
    folder = write_nerfstudio(tmp_path / "ns", rec, depth=True, conf_threshold=None, point_stride=2)
    _assert_unchanged(rec, before)
    cfg = NerfstudioDataParserConfig(data=folder, orientation_method="none", center_method="none",
                                     auto_scale_poses=False, train_split_fraction=1.0, load_3D_points=True)
    out = cfg.setup().get_dataparser_outputs(split="train")
    cams = out.cameras
    assert len(cams) == 3 and [p.name for p in out.image_filenames] == ["a.png", "b.png", "c.png"]
    # the dataparser's own transform is the identity (applied_transform identity, no centring/scaling)
    np.testing.assert_allclose(out.dataparser_transform.double().numpy(), np.eye(4)[:3], atol=1e-6)
    assert out.dataparser_scale == 1.0
    c2w = cams.camera_to_worlds.double().numpy()
    np.testing.assert_allclose(c2w, conv.opencv_w2c_to_opengl_c2w(rec.extrinsics)[:, :3], atol=1e-6)
    for attr, (r, c) in (("fx", (0, 0)), ("fy", (1, 1)), ("cx", (0, 2)), ("cy", (1, 2))):
        np.testing.assert_allclose(getattr(cams, attr).numpy()[:, 0], rec.intrinsics[:, r, c], rtol=1e-6)
    assert (cams.width.numpy()[:, 0] == W).all() and (cams.height.numpy()[:, 0] == H).all()
    # nerfstudio's own rays through pixel centres pass through our back-projected points
    world = rec.world_points()
    for i in range(3):
        rays = cams.generate_rays(camera_indices=i, keep_shape=True)
        o = rays.origins.double().numpy().reshape(-1, 3)
        d = rays.directions.double().numpy().reshape(-1, 3)
        p = world[i].reshape(-1, 3).astype(np.float64)
        assert np.abs(np.cross(d, p - o)).max() < 1e-4
    # seed points: every 2nd pixel, sky left out, in our world, with their colours
    pts = out.metadata["points3D_xyz"].numpy()
    cloud = rec.points(stride=2)
    assert len(pts) == len(cloud) == 3 * len(range(0, H, 2)) * len(range(0, W, 2)) - 2 * len(range(0, W, 2))
    np.testing.assert_allclose(pts, cloud.positions, atol=1e-5)
    np.testing.assert_array_equal(out.metadata["points3D_rgb"].numpy(), cloud.colors)
    # images and depth, read as nerfstudio reads them
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(Image.open(out.image_filenames[i])), rec.images[i])
    meta = json.loads((folder / "transforms.json").read_text())
    unit = meta["depth_unit_scale_factor"]
    assert unit == out.metadata["depth_unit_scale_factor"] == 1e-3  # nerfstudio's default: no option needed
    for i, path in enumerate(out.metadata["depth_filenames"]):
        d = get_depth_image_from_path(path, H, W, unit)[..., 0].numpy()
        ok = ~rec.sky[i]
        np.testing.assert_allclose(d[ok], rec.depth[i][ok], atol=unit / 2 + 1e-6)
        assert (d[~ok] == 0).all()


def test_nerfstudio_options(rec, tmp_path):
    folder = write_nerfstudio(tmp_path / "ns", rec, images=False, points=False)
    assert sorted(p.name for p in folder.iterdir()) == ["transforms.json"]
    meta = json.loads((folder / "transforms.json").read_text())
    assert "ply_file_path" not in meta and "depth_unit_scale_factor" not in meta
    assert [f["file_path"] for f in meta["frames"]] == ["images/a.png", "images/b.png", "images/c.png"]
    with pytest.raises(FileExistsError):
        write_nerfstudio(folder, rec)
    with pytest.raises(ValueError, match="conf_threshold"):
        write_nerfstudio(tmp_path / "none", rec, conf_threshold=100.0)
    assert not (tmp_path / "none").exists()
    # deep depth does not fit millimetres: the unit grows and is recorded
    far = dataclasses.replace(rec, depth=rec.depth * 100)
    meta = json.loads((write_nerfstudio(tmp_path / "far", far, depth=True) / "transforms.json").read_text())
    unit = meta["depth_unit_scale_factor"]
    assert unit > 1e-3
    d16 = np.asarray(Image.open(tmp_path / "far" / meta["frames"][1]["depth_file_path"]))
    assert d16.dtype == np.uint16
    np.testing.assert_allclose(d16 * unit, far.depth[1], atol=unit / 2 + 1e-5)


# ------------------------------------------------------------------------------ depth images



# ------------------------------------------------------------------------------ video


def test_gaussian_video(rec, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from da3_plugins.core.export import write_gaussian_video

    with pytest.raises(ValueError, match="no Gaussians"):
        write_gaussian_video(tmp_path / "v.mp4", rec)
    assert list(tmp_path.iterdir()) == []
    # smooth photos (the fixture's are noise, which no lossy video keeps)
    yy, xx = np.mgrid[0:42, 0:56]
    rec.images[:] = np.stack([xx * 4, yy * 5, 255 - xx * 4], -1).astype(np.uint8)
    pts = rec.points()
    n = len(pts)
    z = np.linalg.norm(pts.positions - rec.camera_centers[pts.view], axis=1)
    rec.gaussians = GaussianSet(means=pts.positions, scales=np.repeat((z / 60.0)[:, None], 3, 1),
                                rotations=np.tile([1.0, 0, 0, 0], (n, 1)),
                                harmonics=((pts.colors / 255.0 - 0.5) / 0.28209479177387814)[:, :, None],
                                opacities=np.full(n, 0.95))
    ticks = []
    path = write_gaussian_video(tmp_path / "v.mp4", rec, frames=5, fps=5, scale=1.0,
                                progress=lambda d, t: ticks.append(d))
    assert ticks == [1, 2, 3, 4, 5]
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame[..., ::-1])
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (42, 56, 3)
    # the first frame is rendered from camera 0: it looks like its photo (mp4 is lossy)
    diff = np.abs(frames[0].astype(float) - rec.images[0]).mean()
    assert diff < 12, diff
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
