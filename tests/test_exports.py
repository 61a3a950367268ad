"""Every export read back by an independent reader: plyfile, trimesh, pygltflib, pycolmap,
nerfstudio's own dataparser, Pillow."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import conventions as conv
from da3_plugins.core.export import (read_gaussian_ply, write_colmap, write_depth_images, write_gaussian_ply,
                                     write_glb, write_nerfstudio, write_point_ply)
from da3_plugins.core.reconstruction import GaussianSet, Reconstruction


def _look_at(centre, target):
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 1.0, 0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])  # rows: camera axes in world
    return np.concatenate([r, (-r @ centre)[:, None]], 1)


@pytest.fixture
def rec():
    """A textured plane z = 4 seen by 3 cameras; processed 42x56, originals 300x400 / 330x400."""
    n, h, w = 3, 42, 56
    k = np.array([[50.0, 0, 28.5], [0, 52.0, 20.5], [0, 0, 1]])
    centres = [np.array([-0.5, 0.1, 0.0]), np.array([0.0, 0.0, 0.2]), np.array([0.6, -0.1, 0.1])]
    ext = np.stack([_look_at(c, np.array([0.0, 0.0, 4.0])) for c in centres])
    # exact z-depth of the plane z = 4 through each pixel centre
    u, v = conv.pixel_centres(h, w)
    depth = np.zeros((n, h, w), np.float32)
    for i in range(n):
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # camera frame, z = 1
        d_world = rays @ ext[i, :3, :3]  # R^T ray
        c = conv.camera_centers(ext[i])
        depth[i] = (4.0 - c[2]) / d_world[..., 2]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    conf = (1 + rng.random((n, h, w)) * 3).astype(np.float32)
    pt = np.stack([np.diag([w / 400, h / 300, 1.0]), np.diag([w / 400, h / 300, 1.0]),
                   np.array([[w / 400, 0, 0], [0, h / 300, -1.5], [0, 0, 1]])])
    return Reconstruction(images=images, depth=depth, extrinsics=ext, intrinsics=np.tile(k, (n, 1, 1)), conf=conf,
                          original_sizes=np.array([[300, 400], [300, 400], [330, 400]]), pixel_transform=pt,
                          image_names=["a", "b", "c"], model="test")


def _copy(rec):
    return {k: np.array(getattr(rec, k), copy=True) for k in ("images", "depth", "conf", "extrinsics", "intrinsics")}


def _unchanged(rec, before):
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(rec, k), v)


def test_point_ply_plyfile(rec, tmp_path):
    plyfile = pytest.importorskip("plyfile")
    before = _copy(rec)
    path = write_point_ply(tmp_path / "p.ply", rec, conf_threshold=2.0)
    _unchanged(rec, before)
    v = plyfile.PlyData.read(str(path))["vertex"]
    keep = rec.conf >= 2.0
    assert v.count == int(keep.sum())
    xyz = np.stack([v["x"], v["y"], v["z"]], -1)
    np.testing.assert_allclose(xyz[:, 2], 4.0, atol=1e-4)  # every point on the plane
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), rec.images[keep])
    assert v["confidence"].min() >= 2.0 and set(np.unique(v["view"])) == {0, 1, 2}
    with pytest.raises(ValueError, match="conf_threshold"):
        write_point_ply(tmp_path / "none.ply", rec, conf_threshold=100.0)
    assert not (tmp_path / "none.ply").exists()


@pytest.mark.parametrize("degree", [0, 2])
def test_gaussian_ply_plyfile_and_round_trip(tmp_path, degree):
    plyfile = pytest.importorskip("plyfile")
    rng = np.random.default_rng(degree)
    g, k = 100, (degree + 1) ** 2
    q = rng.normal(size=(g, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gs = GaussianSet(means=rng.normal(size=(g, 3)), scales=rng.random((g, 3)) * 0.1 + 0.01, rotations=q,
                     harmonics=rng.normal(size=(g, 3, k)), opacities=rng.random(g) * 0.98 + 0.01)
    path = write_gaussian_ply(tmp_path / "gs.ply", gs)
    v = plyfile.PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    rest = 3 * (k - 1)
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(rest)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                              "rot_0", "rot_1", "rot_2", "rot_3"])
    np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"])), gs.opacities, rtol=1e-4)
    np.testing.assert_allclose(np.exp(v["scale_1"]), gs.scales[:, 1], rtol=1e-5)
    np.testing.assert_array_equal(v["rot_0"], gs.rotations[:, 0])
    np.testing.assert_array_equal(v["f_dc_1"], gs.harmonics[:, 1, 0])
    if degree:
        # 3DGS order: all of red's higher coefficients, then green's, then blue's
        np.testing.assert_array_equal(v[f"f_rest_{k - 1}"], gs.harmonics[:, 1, 1])
    back = read_gaussian_ply(path)
    np.testing.assert_allclose(back.harmonics, gs.harmonics, atol=1e-6)
    np.testing.assert_allclose(back.means, gs.means, atol=1e-6)


def test_gaussian_ply_needs_gaussians(rec, tmp_path):
    with pytest.raises(ValueError, match="no Gaussians"):
        write_gaussian_ply(tmp_path / "g.ply", rec)
    assert list(tmp_path.iterdir()) == []


def test_glb_trimesh_and_pygltflib(rec, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    pygltflib = pytest.importorskip("pygltflib")
    before = _copy(rec)
    path = write_glb(tmp_path / "s.glb", rec, conf_threshold=None)
    _unchanged(rec, before)
    scene = trimesh.load(str(path))
    geoms = list(scene.geometry.values())
    cloud = next(g for g in geoms if isinstance(g, trimesh.PointCloud))
    assert len(cloud.vertices) == rec.depth.size
    assert cloud.colors.shape == (rec.depth.size, 4)
    # glTF axes: y and z flipped; the plane z = 4 becomes z = -4
    np.testing.assert_allclose(cloud.vertices[:, 2], -4.0, atol=1e-4)
    lines = [g for g in geoms if isinstance(g, trimesh.path.Path3D)]
    assert lines, "camera frusta missing"
    gltf = pygltflib.GLTF2().load(str(path))
    modes = sorted(p.mode for m in gltf.meshes for p in m.primitives)
    assert modes == [0, 1]
    lines_acc = gltf.accessors[gltf.meshes[1].primitives[0].attributes.POSITION]
    assert lines_acc.count == 3 * 16  # 8 segments per view
    # recentring moves the median to the origin
    centred = trimesh.load(str(write_glb(tmp_path / "c.glb", rec, conf_threshold=None, recenter=True)))
    pts = next(g for g in centred.geometry.values() if isinstance(g, trimesh.PointCloud)).vertices
    np.testing.assert_allclose(np.median(pts, 0), 0, atol=0.05)


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_pycolmap(rec, tmp_path, binary):
    pycolmap = pytest.importorskip("pycolmap")
    before = _copy(rec)
    folder = write_colmap(tmp_path / "sparse", rec, binary=binary, conf_threshold=None, stride=3)
    _unchanged(rec, before)
    model = pycolmap.Reconstruction(str(folder))
    assert model.num_images() == 3 and model.num_cameras() == 3
    k_orig = rec.intrinsics_original
    for i in range(3):
        img = model.image(i + 1)
        cam = model.camera(img.camera_id)
        h, w = rec.original_sizes[i]
        assert (cam.width, cam.height) == (w, h) and cam.model.name == "PINHOLE"
        np.testing.assert_allclose(cam.params, [k_orig[i, 0, 0], k_orig[i, 1, 1], k_orig[i, 0, 2], k_orig[i, 1, 2]])
        pose = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        np.testing.assert_allclose(pose.matrix(), rec.extrinsics[i], atol=1e-6)
        # each point reprojects onto its stored 2-D observation (original pixel coordinates)
        for p2d in list(img.points2D)[:50]:
            xyz = model.point3D(p2d.point3D_id).xyz
            cam_pt = rec.extrinsics[i, :, :3] @ xyz + rec.extrinsics[i, :, 3]
            uv = (k_orig[i] @ cam_pt)[:2] / cam_pt[2]
            np.testing.assert_allclose(uv, p2d.xy, atol=1e-3)
    assert model.num_points3D() == sum(len(range(0, 42, 3)) * len(range(0, 56, 3)) for _ in range(3))
    xyz = np.array([p.xyz for p in model.points3D.values()])
    np.testing.assert_allclose(xyz[:, 2], 4.0, atol=1e-4)


def test_nerfstudio_dataparser(rec, tmp_path):
    pytest.importorskip("nerfstudio")
    pytest.importorskip("open3d")
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    folder = write_nerfstudio(tmp_path / "ns", rec, depth=True, conf_threshold=None)
    cfg = NerfstudioDataParserConfig(data=folder, orientation_method="none", center_method="none",
                                     auto_scale_poses=False, train_split_fraction=1.0, load_3D_points=True)
    out = cfg.setup().get_dataparser_outputs(split="train")
    cams = out.cameras
    assert len(cams) == 3
    c2w = cams.camera_to_worlds.double().numpy()
    expected = conv.opencv_w2c_to_opengl_c2w(rec.extrinsics)[:, :3]
    # the dataparser may scale (scale_factor 1 here) and transforms with its own matrix (identity)
    tf = out.dataparser_transform.double().numpy()
    np.testing.assert_allclose(tf, np.eye(4)[:3], atol=1e-6)
    np.testing.assert_allclose(c2w, expected, atol=1e-5)
    np.testing.assert_allclose(cams.fx.numpy()[:, 0], rec.intrinsics[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(cams.cx.numpy()[:, 0], rec.intrinsics[:, 0, 2], rtol=1e-6)
    pts = out.metadata["points3D_xyz"].numpy()
    assert len(pts) > 100
    np.testing.assert_allclose(pts[:, 2], 4.0, atol=1e-3)
    meta = json.loads((folder / "transforms.json").read_text())
    d16 = np.asarray(Image.open(folder / meta["frames"][0]["depth_file_path"]))
    np.testing.assert_allclose(d16 * meta["depth_unit_scale_factor"], rec.depth[0], atol=meta["depth_unit_scale_factor"])


def test_depth_images(rec, tmp_path):
    folder = write_depth_images(tmp_path / "depth", rec)
    names = sorted(p.name for p in folder.iterdir())
    assert "a_depth.png" in names and "a_conf.png" in names and "a_preview.png" in names
    colour = np.asarray(Image.open(folder / "a_depth.png"))
    assert colour.shape == (42, 56, 3) and colour.std() > 0
    raw = np.asarray(Image.open(folder / "b_depth16.png"))
    unit = json.loads((folder / "depth_units.json").read_text())["unit"]
    assert raw.dtype == np.uint16
    np.testing.assert_allclose(raw * unit, rec.depth[1], atol=unit)
    preview = Image.open(folder / "c_preview.png")
    assert preview.size == (112, 42)


def test_interrupted_exports_leave_nothing(rec, tmp_path, monkeypatch):
    import da3_plugins.core.export.depth_images as di
    import da3_plugins.core.export.ply as ply

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(ply, "_PLY_TYPES", {})  # the header writer fails half-way
    with pytest.raises(KeyError):
        write_point_ply(tmp_path / "p.ply", rec, conf_threshold=None)
    monkeypatch.setattr(di, "colorize_confidence", boom)
    with pytest.raises(RuntimeError):
        write_depth_images(tmp_path / "depth", rec)
    assert list(tmp_path.iterdir()) == []


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
