"""Every export read back by an independent reader: plyfile, trimesh, pygltflib, pycolmap,
nerfstudio's own dataparser, Pillow.  Also: interrupted writers leave nothing, no writer
modifies the reconstruction, bad input gives a clear error."""

from __future__ import annotations

import copy
import dataclasses
import json
import struct

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import conventions as conv
from da3_plugins.core.export import (read_gaussian_ply, write_colmap, write_depth_images, write_gaussian_ply,
                                     write_glb, write_nerfstudio, write_point_ply)
from da3_plugins.core.reconstruction import GaussianSet, PointCloud, Reconstruction

H, W = 42, 56


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
    """A textured plane z = 4 seen by 3 cameras; processed 42x56, originals 300x400, 300x400 and
    330x400 (the last one cropped: a 1.5-row offset), so K differs between the two sizes."""
    n = 3
    k = np.array([[50.0, 0, 28.5], [0, 52.0, 20.5], [0, 0, 1]])
    centres = [np.array([-0.5, 0.1, 0.0]), np.array([0.0, 0.0, 0.2]), np.array([0.6, -0.1, 0.1])]
    ext = np.stack([_look_at(c, np.array([0.0, 0.0, 4.0])) for c in centres])
    # exact z-depth of the plane z = 4 through each pixel centre
    u, v = conv.pixel_centres(H, W)
    depth = np.zeros((n, H, W), np.float32)
    for i in range(n):
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # camera frame, z = 1
        d_world = rays @ ext[i, :3, :3]  # R^T ray
        c = conv.camera_centers(ext[i])
        depth[i] = (4.0 - c[2]) / d_world[..., 2]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, H, W, 3), dtype=np.uint8)
    conf = (1 + rng.random((n, H, W)) * 3).astype(np.float32)
    pt = np.stack([np.diag([W / 400, H / 300, 1.0]), np.diag([W / 400, H / 300, 1.0]),
                   np.array([[W / 400, 0, 0], [0, H / 300, -1.5], [0, 0, 1]])])
    return Reconstruction(images=images, depth=depth, extrinsics=ext, intrinsics=np.tile(k, (n, 1, 1)), conf=conf,
                          original_sizes=np.array([[300, 400], [300, 400], [330, 400]]), pixel_transform=pt,
                          image_names=["a", "b", "c"], model="test")


def _random_gaussians(g: int, degree: int, seed: int = 0) -> GaussianSet:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(g, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return GaussianSet(means=rng.normal(size=(g, 3)), scales=rng.random((g, 3)) * 0.1 + 0.01, rotations=q,
                       harmonics=rng.normal(size=(g, 3, (degree + 1) ** 2)), opacities=rng.random(g) * 0.98 + 0.01)


def _per_pixel_gaussians(rec: Reconstruction, view_order=(1, 0, 2)) -> GaussianSet:
    """One Gaussian per pixel at its world point, views concatenated in ``view_order`` (as a
    chunked run may), pixels row-major within each view."""
    world = rec.world_points()
    idx = list(view_order)
    means = world[idx].reshape(-1, 3)
    g = len(means)
    return GaussianSet(means=means, scales=np.full((g, 3), 0.01), rotations=np.tile([1.0, 0, 0, 0], (g, 1)),
                       harmonics=np.zeros((g, 3, 1)), opacities=np.full(g, 0.5),
                       view=np.repeat(np.array(idx), H * W))


def _snapshot(rec: Reconstruction):
    return copy.deepcopy(rec)


def _assert_unchanged(rec: Reconstruction, before: Reconstruction) -> None:
    for f in dataclasses.fields(Reconstruction):
        a, b = getattr(rec, f.name), getattr(before, f.name)
        if isinstance(b, GaussianSet):
            for g in dataclasses.fields(GaussianSet):
                np.testing.assert_array_equal(getattr(a, g.name), getattr(b, g.name), err_msg=f"gaussians.{g.name}")
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name


def _ply_header(path) -> list:
    with open(path, "rb") as fh:
        lines = []
        while not lines or lines[-1] != "end_header":
            lines.append(fh.readline().decode("ascii").strip())
    return lines


# ------------------------------------------------------------------------------ point PLY


def test_point_ply_plyfile(rec, tmp_path):
    plyfile = pytest.importorskip("plyfile")
    before = _snapshot(rec)
    path = write_point_ply(tmp_path / "p.ply", rec, conf_threshold=2.0)
    _assert_unchanged(rec, before)
    assert "format binary_little_endian 1.0" in _ply_header(path)
    v = plyfile.PlyData.read(str(path))["vertex"]
    assert [(p.name, p.val_dtype) for p in v.properties] == [
        ("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
        ("confidence", "f4"), ("view", "i4")]
    keep = rec.conf >= 2.0
    assert v.count == int(keep.sum())
    xyz = np.stack([v["x"], v["y"], v["z"]], -1)
    np.testing.assert_allclose(xyz[:, 2], 4.0, atol=1e-4)  # every point on the plane
    np.testing.assert_array_equal(xyz, rec.points(conf_threshold=2.0).positions)
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], -1), rec.images[keep])
    np.testing.assert_array_equal(v["confidence"], rec.conf[keep])
    np.testing.assert_array_equal(v["view"], np.nonzero(keep)[0])
    # the default keeps every valid pixel; a stride takes every s-th pixel
    assert plyfile.PlyData.read(str(write_point_ply(tmp_path / "all.ply", rec)))["vertex"].count == rec.depth.size
    strided = plyfile.PlyData.read(str(write_point_ply(tmp_path / "s.ply", rec, stride=4)))["vertex"]
    assert strided.count == 3 * len(range(0, H, 4)) * len(range(0, W, 4))


def test_point_ply_from_a_point_cloud(rec, tmp_path):
    plyfile = pytest.importorskip("plyfile")
    cloud = rec.points()
    path = write_point_ply(tmp_path / "c.ply", cloud, conf_threshold=3.0)
    v = plyfile.PlyData.read(str(path))["vertex"]
    keep = cloud.confidence >= 3.0
    np.testing.assert_array_equal(v["x"], cloud.positions[keep, 0])
    np.testing.assert_array_equal(v["blue"], cloud.colors[keep, 2])
    with pytest.raises(ValueError, match="conf_threshold"):
        write_point_ply(tmp_path / "x.ply", cloud, conf_threshold="auto")
    with pytest.raises(ValueError, match="stride"):
        write_point_ply(tmp_path / "x.ply", cloud, stride=2)
    with pytest.raises(ValueError, match="conf_threshold"):
        write_point_ply(tmp_path / "x.ply", PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8),
                                                       np.zeros(0, np.float32), np.zeros(0, np.int32)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ply"]


# ------------------------------------------------------------------------------ Gaussian PLY


@pytest.mark.parametrize("degree", [0, 2])
def test_gaussian_ply_plyfile_and_round_trip(tmp_path, degree):
    plyfile = pytest.importorskip("plyfile")
    g, k = 100, (degree + 1) ** 2
    gs = _random_gaussians(g, degree, seed=degree)
    gs_before = copy.deepcopy(gs)
    path = write_gaussian_ply(tmp_path / "gs.ply", gs)
    for f in ("means", "scales", "rotations", "harmonics", "opacities"):
        np.testing.assert_array_equal(getattr(gs, f), getattr(gs_before, f))
    assert "format binary_little_endian 1.0" in _ply_header(path)
    v = plyfile.PlyData.read(str(path))["vertex"]
    names = [p.name for p in v.properties]
    rest = 3 * (k - 1)
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(rest)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                              "rot_0", "rot_1", "rot_2", "rot_3"])
    assert {p.val_dtype for p in v.properties} == {"f4"}
    np.testing.assert_array_equal(v["nx"], 0)
    np.testing.assert_allclose(1 / (1 + np.exp(-v["opacity"].astype(np.float64))), gs.opacities, rtol=1e-4)
    for i in range(3):
        np.testing.assert_allclose(np.exp(v[f"scale_{i}"]), gs.scales[:, i], rtol=1e-5)
        np.testing.assert_array_equal(v[f"f_dc_{i}"], gs.harmonics[:, i, 0])
    for i in range(4):  # the renderer's (w, x, y, z) slots, as stored
        np.testing.assert_array_equal(v[f"rot_{i}"], gs.rotations[:, i])
    if degree:
        # 3DGS order: all of red's higher coefficients, then green's, then blue's
        for c in range(3):
            for j in range(1, k):
                np.testing.assert_array_equal(v[f"f_rest_{c * (k - 1) + j - 1}"], gs.harmonics[:, c, j])
    back = read_gaussian_ply(path)
    np.testing.assert_allclose(back.harmonics, gs.harmonics, atol=1e-6)
    np.testing.assert_allclose(back.means, gs.means, atol=1e-6)
    np.testing.assert_allclose(back.scales, gs.scales, rtol=1e-5)
    np.testing.assert_allclose(back.opacities, gs.opacities, rtol=1e-4)
    np.testing.assert_array_equal(back.rotations, gs.rotations)
    # f_rest is optional
    dc_only = plyfile.PlyData.read(str(write_gaussian_ply(tmp_path / "dc.ply", gs, include_rest=False)))["vertex"]
    assert not [p.name for p in dc_only.properties if p.name.startswith("f_rest")]
    assert read_gaussian_ply(tmp_path / "dc.ply").sh_degree == 0


def test_read_gaussian_ply_reads_a_plyfile_written_file(tmp_path):
    """Our reader against an independent writer: plyfile, with mixed types, an extra
    property, big-endian data and a trailing element."""
    plyfile = pytest.importorskip("plyfile")
    rng = np.random.default_rng(3)
    g = 50
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    dtype = [(n, "f8" if n == "x" else "f4") for n in names] + [("view", "i4")]
    arr = np.zeros(g, dtype=dtype)
    for n in names:
        arr[n] = rng.normal(size=g)
    arr["view"] = rng.integers(0, 3, g)
    extra = np.zeros(1, dtype=[("value", "f4")])
    path = tmp_path / "ext.ply"
    plyfile.PlyData([plyfile.PlyElement.describe(arr, "vertex"), plyfile.PlyElement.describe(extra, "other")],
                    byte_order=">").write(str(path))
    gs = read_gaussian_ply(path)
    assert len(gs) == g and gs.sh_degree == 1
    np.testing.assert_allclose(gs.means[:, 0], arr["x"], rtol=1e-6)
    np.testing.assert_array_equal(gs.harmonics[:, 2, 0], arr["f_dc_2"])
    np.testing.assert_array_equal(gs.harmonics[:, 1, 1:], np.stack([arr[f"f_rest_{i}"] for i in (3, 4, 5)], -1))
    np.testing.assert_allclose(gs.scales[:, 0], np.exp(arr["scale_0"]), rtol=1e-5)
    np.testing.assert_allclose(gs.opacities, 1 / (1 + np.exp(-arr["opacity"].astype(np.float64))), rtol=1e-5)
    np.testing.assert_array_equal(gs.rotations[:, 3], arr["rot_3"])
    # a point PLY is not a Gaussian PLY
    with pytest.raises(ValueError, match="missing properties"):
        read_gaussian_ply(write_point_ply(tmp_path / "p.ply", PointCloud(
            np.zeros((2, 3), np.float32), np.zeros((2, 3), np.uint8), np.ones(2, np.float32), np.zeros(2, np.int32))))


def test_gaussian_ply_pruning(rec, tmp_path):
    plyfile = pytest.importorskip("plyfile")
    rec.gaussians = _per_pixel_gaussians(rec)
    before = _snapshot(rec)
    # the official border: int(8/256 * H) rows and int(8/256 * W) columns on each side
    bh, bw = int(8 / 256 * H), int(8 / 256 * W)
    v = plyfile.PlyData.read(str(write_gaussian_ply(tmp_path / "b.ply", rec, prune_border=True)))["vertex"]
    _assert_unchanged(rec, before)
    expected = rec.world_points()[[1, 0, 2]][:, bh:H - bh, bw:W - bw].reshape(-1, 3)
    np.testing.assert_allclose(np.stack([v["x"], v["y"], v["z"]], -1), expected, atol=1e-6)
    # depth quantile: per view, the nearest 90 %
    v = plyfile.PlyData.read(str(write_gaussian_ply(tmp_path / "d.ply", rec, depth_quantile=0.9)))["vertex"]
    kept = {tuple(p) for p in np.stack([v["x"], v["y"], v["z"]], -1)}
    world = rec.world_points()
    for i in range(3):  # (view 1 faces the plane: one depth, all kept)
        in_view = np.array([tuple(p) in kept for p in world[i].reshape(-1, 3)])
        d = rec.depth[i].reshape(-1)
        q = np.quantile(d, 0.9)
        assert (d < q - 1e-5).sum() <= in_view.sum() <= (d <= q + 1e-5).sum()
        assert d[in_view].max() <= q + 1e-5
    assert len(kept) < 3 * H * W
    # the default writes everything; pruning needs a reconstruction
    assert plyfile.PlyData.read(str(write_gaussian_ply(tmp_path / "all.ply", rec)))["vertex"].count == 3 * H * W
    with pytest.raises(ValueError, match="prune_border"):
        write_gaussian_ply(tmp_path / "x.ply", rec.gaussians, prune_border=True)
    with pytest.raises(ValueError, match="min_opacity"):
        write_gaussian_ply(tmp_path / "x.ply", rec, min_opacity=0.9)
    assert not (tmp_path / "x.ply").exists()


def test_gaussian_ply_needs_gaussians(rec, tmp_path):
    with pytest.raises(ValueError, match="no Gaussians"):
        write_gaussian_ply(tmp_path / "g.ply", rec)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ GLB


def _accessor_array(gltf, index: int) -> np.ndarray:
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    comps = {"VEC3": 3, "VEC4": 4}[acc.type]
    dtype = {5126: np.float32, 5121: np.uint8}[acc.componentType]
    blob = gltf.binary_blob()
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    return np.frombuffer(blob, dtype=dtype, count=acc.count * comps, offset=start).reshape(acc.count, comps)


def test_glb_trimesh_and_pygltflib(rec, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    pygltflib = pytest.importorskip("pygltflib")
    before = _snapshot(rec)
    path = write_glb(tmp_path / "s.glb", rec, conf_threshold=None)
    _assert_unchanged(rec, before)
    # trimesh: a coloured point cloud on the plane, and the frusta as lines
    scene = trimesh.load(str(path))
    geoms = list(scene.geometry.values())
    cloud = next(g for g in geoms if isinstance(g, trimesh.PointCloud))
    assert len(cloud.vertices) == rec.depth.size
    assert cloud.colors.shape == (rec.depth.size, 4)
    np.testing.assert_array_equal(cloud.colors[:, :3], rec.images.reshape(-1, 3))
    # glTF axes: y and z flipped; the plane z = 4 becomes z = -4
    np.testing.assert_allclose(cloud.vertices[:, 2], -4.0, atol=1e-4)
    lines = [g for g in geoms if isinstance(g, trimesh.path.Path3D)]
    assert lines, "camera frusta missing"
    # pygltflib: the document itself
    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.asset.version == "2.0"
    modes = sorted(p.mode for m in gltf.meshes for p in m.primitives)
    assert modes == [pygltflib.POINTS, pygltflib.LINES]
    prim = gltf.meshes[0].primitives[0]
    pos = _accessor_array(gltf, prim.attributes.POSITION)
    np.testing.assert_array_equal(pos, conv.points_to_gltf(rec.points().positions))
    acc = gltf.accessors[prim.attributes.POSITION]
    np.testing.assert_array_equal(acc.min, pos.min(0))
    np.testing.assert_array_equal(acc.max, pos.max(0))
    col_acc = gltf.accessors[prim.attributes.COLOR_0]
    assert col_acc.normalized and col_acc.type == "VEC4"
    np.testing.assert_array_equal(_accessor_array(gltf, prim.attributes.COLOR_0)[:, :3], rec.images.reshape(-1, 3))
    assert all((v.byteOffset or 0) % 4 == 0 for v in gltf.bufferViews)
    # the frusta: 8 segments per view, the first starting at the camera centre, one colour per view
    lprim = gltf.meshes[1].primitives[0]
    segs = _accessor_array(gltf, lprim.attributes.POSITION)
    assert len(segs) == 3 * 16
    np.testing.assert_allclose(segs[::16], conv.points_to_gltf(rec.camera_centers), atol=1e-6)
    lcol = _accessor_array(gltf, lprim.attributes.COLOR_0)
    assert len({tuple(c) for c in lcol}) == 3
    # the binary container: header length, 4-byte aligned chunks
    raw = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", raw)
    assert (magic, version, length) == (b"glTF", 2, len(raw))
    json_len, json_type = struct.unpack_from("<I4s", raw, 12)
    assert json_type == b"JSON" and json_len % 4 == 0
    bin_len, bin_type = struct.unpack_from("<I4s", raw, 20 + json_len)
    assert bin_type == b"BIN\x00" and bin_len % 4 == 0 and 28 + json_len + bin_len == len(raw)


def test_glb_recenter_subsample_and_errors(rec, tmp_path):
    trimesh = pytest.importorskip("trimesh")
    pygltflib = pytest.importorskip("pygltflib")
    path = write_glb(tmp_path / "c.glb", rec, conf_threshold=None, recenter=True)
    pts = next(g for g in trimesh.load(str(path)).geometry.values() if isinstance(g, trimesh.PointCloud)).vertices
    np.testing.assert_allclose(np.median(pts, 0), 0, atol=0.05)
    # extras.world_to_gltf maps the reconstruction's points onto the file's
    gltf = pygltflib.GLTF2().load(str(path))
    m = np.array(gltf.extras["world_to_gltf"])
    world = rec.points().positions.astype(np.float64)
    mapped = world @ m[:3, :3].T + m[:3, 3]
    np.testing.assert_allclose(_accessor_array(gltf, gltf.meshes[0].primitives[0].attributes.POSITION), mapped,
                               atol=1e-5)
    # seeded subsampling: the same file twice, max_points points
    a = write_glb(tmp_path / "a.glb", rec, conf_threshold=None, max_points=500, cameras=False)
    b = write_glb(tmp_path / "b.glb", rec, conf_threshold=None, max_points=500, cameras=False)
    assert a.read_bytes() == b.read_bytes()
    gltf = pygltflib.GLTF2().load(str(a))
    assert len(gltf.meshes) == 1 and gltf.accessors[gltf.meshes[0].primitives[0].attributes.POSITION].count == 500
    with pytest.raises(ValueError, match="conf_threshold"):
        write_glb(tmp_path / "none.glb", rec, conf_threshold=100.0)
    with pytest.raises(ValueError, match="max_points"):
        write_glb(tmp_path / "none.glb", rec, max_points=0)
    assert not (tmp_path / "none.glb").exists()


# ------------------------------------------------------------------------------ COLMAP


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


def test_depth_images(rec, tmp_path):
    rec.sky = np.zeros((3, H, W), bool)
    rec.sky[1, :5, :7] = True
    before = _snapshot(rec)
    folder = write_depth_images(tmp_path / "depth", rec)
    _assert_unchanged(rec, before)
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["depth_units.json"] + [f"{s}_{kind}.png" for s in "abc"
                                                   for kind in ("depth", "conf", "depth16", "preview")])
    colour = np.asarray(Image.open(folder / "a_depth.png"))
    assert colour.shape == (H, W, 3) and colour.dtype == np.uint8 and colour.std() > 0
    # near is warm: the nearest tenth is redder than the farthest tenth, which is bluer
    near, far = rec.depth[0] <= np.quantile(rec.depth[0], 0.1), rec.depth[0] >= np.quantile(rec.depth[0], 0.9)
    assert colour[near][:, 0].mean() > colour[far][:, 0].mean() + 50
    assert colour[far][:, 2].mean() > colour[near][:, 2].mean() + 50
    # sky is black in the picture and 0 in the data
    sky_pic = np.asarray(Image.open(folder / "b_depth.png"))
    assert (sky_pic[:5, :7] == 0).all() and (sky_pic[5:] != 0).any(-1).all()
    raw = np.asarray(Image.open(folder / "b_depth16.png"))
    units = json.loads((folder / "depth_units.json").read_text())
    unit = units["unit"]
    assert raw.dtype == np.uint16 and unit == 1e-3 and units["metric"] is False
    assert (raw[:5, :7] == 0).all()
    ok = ~rec.sky[1]
    np.testing.assert_allclose(raw[ok] * unit, rec.depth[1][ok], atol=unit / 2 + 1e-6)
    # high confidence is warm
    conf_pic = np.asarray(Image.open(folder / "a_conf.png")).astype(float)
    hi, lo = rec.conf[0] >= np.quantile(rec.conf[0], 0.9), rec.conf[0] <= np.quantile(rec.conf[0], 0.1)
    assert conf_pic[hi][:, 0].mean() > conf_pic[lo][:, 0].mean() + 50
    assert conf_pic[lo][:, 2].mean() > conf_pic[hi][:, 2].mean() + 50
    preview = Image.open(folder / "c_preview.png")
    assert preview.size == (2 * W, H)
    np.testing.assert_array_equal(np.asarray(preview)[:, :W], rec.images[2])
    np.testing.assert_array_equal(np.asarray(preview)[:, W:], np.asarray(Image.open(folder / "c_depth.png")))
    with pytest.raises(FileExistsError):
        write_depth_images(folder, rec)


def test_colour_maps_have_no_matplotlib(rec):
    from da3_plugins.core.export import colorize_confidence, colorize_depth

    depth = rec.depth[0].copy()
    depth[0, 0], depth[0, 1], depth[0, 2] = np.nan, 0.0, -1.0
    pic = colorize_depth(depth)
    assert (pic[0, :3] == 0).all()
    conf = rec.conf[0].copy()
    conf[1, 1] = np.inf
    assert (colorize_confidence(conf)[1, 1] == 0).all()
    assert colorize_depth(np.full((4, 4), np.nan)).max() == 0


# ------------------------------------------------------------------------------ robustness


def _fail_after(n_calls, real):
    """A stand-in for ``real`` that raises on call number ``n_calls`` (1-based)."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(1)
        if len(calls) >= n_calls:
            raise RuntimeError("interrupted")
        return real(*args, **kwargs)

    return fake


def test_interrupted_exports_leave_nothing(rec, tmp_path, monkeypatch):
    import da3_plugins.core.export.colmap as colmap_mod
    import da3_plugins.core.export.depth_images as di_mod
    import da3_plugins.core.export.gltf as gltf_mod
    import da3_plugins.core.export.nerfstudio as ns_mod
    import da3_plugins.core.export.ply as ply_mod

    rec.gaussians = _random_gaussians(50, 2)

    def half_rows(fh, data, chunk=1 << 18):  # the header and half the rows, then a failure
        fh.write(data[: len(data) // 2].tobytes())
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(ply_mod, "_write_rows", half_rows)
        with pytest.raises(RuntimeError):
            write_point_ply(tmp_path / "p.ply", rec)
        with pytest.raises(RuntimeError):
            write_gaussian_ply(tmp_path / "g.ply", rec)

    class FailingFile:  # writes the first chunk, fails on the second
        def __init__(self, *args):
            self.fh, self.writes = open(*args), 0

        def write(self, data):
            self.writes += 1
            if self.writes > 1:
                raise RuntimeError("interrupted")
            return self.fh.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    with monkeypatch.context() as m:
        m.setattr(gltf_mod, "open", FailingFile, raising=False)
        with pytest.raises(RuntimeError):
            write_glb(tmp_path / "s.glb", rec)

    with monkeypatch.context() as m:  # cameras and images written, then points3D fails
        m.setattr(colmap_mod, "_points_bin", _fail_after(1, colmap_mod._points_bin))
        with pytest.raises(RuntimeError):
            write_colmap(tmp_path / "sparse", rec)

    class FailingImage:  # the second image fails
        fromarray = staticmethod(_fail_after(2, Image.fromarray))

    with monkeypatch.context() as m:
        m.setattr(ns_mod, "Image", FailingImage)
        with pytest.raises(RuntimeError):
            write_nerfstudio(tmp_path / "ns", rec, depth=True)

    with monkeypatch.context() as m:
        m.setattr(di_mod, "colorize_confidence", _fail_after(2, di_mod.colorize_confidence))
        with pytest.raises(RuntimeError):
            write_depth_images(tmp_path / "depth", rec)

    assert list(tmp_path.iterdir()) == []  # not even a temporary name


def test_failed_overwrite_keeps_the_old_folder(rec, tmp_path, monkeypatch):
    import da3_plugins.core.export.colmap as colmap_mod

    folder = write_colmap(tmp_path / "sparse", rec, stride=6)
    old = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(colmap_mod, "_points_bin", _fail_after(1, colmap_mod._points_bin))
    with pytest.raises(RuntimeError):
        write_colmap(folder, rec, stride=3, overwrite=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old
    assert [p.name for p in tmp_path.iterdir()] == ["sparse"]


def test_no_writer_modifies_the_reconstruction(rec, tmp_path):
    rec.gaussians = _per_pixel_gaussians(rec)
    rec.sky = np.zeros((3, H, W), bool)
    rec.sky[2, -4:] = True
    rec.options = rec.options.replace(image_files=("a.jpg", "b.jpg", "c.jpg"))
    before = _snapshot(rec)
    write_point_ply(tmp_path / "p.ply", rec, conf_threshold="auto", stride=2)
    write_gaussian_ply(tmp_path / "g.ply", rec, prune_border=True, depth_quantile=0.9)
    write_glb(tmp_path / "s.glb", rec, recenter=True, max_points=1000)
    write_colmap(tmp_path / "colmap", rec, binary=False, max_points=1000)
    write_nerfstudio(tmp_path / "ns", rec, depth=True)
    write_depth_images(tmp_path / "depth", rec)
    _assert_unchanged(rec, before)


def test_bad_input_errors_name_the_argument(rec, tmp_path):
    with pytest.raises(ValueError, match="conf_threshold"):
        write_point_ply(tmp_path / "x.ply", rec, conf_threshold=100.0)
    with pytest.raises(ValueError, match="conf_threshold"):
        write_point_ply(tmp_path / "x.ply", rec, conf_threshold="most")
    with pytest.raises(ValueError, match="stride"):
        write_point_ply(tmp_path / "x.ply", rec, stride=0)
    with pytest.raises(ValueError, match="stride"):
        write_colmap(tmp_path / "x", rec, stride=1.5)
    with pytest.raises(ValueError, match="source"):
        write_point_ply(tmp_path / "x.ply", rec.depth)
    with pytest.raises(ValueError, match="gaussians"):
        write_gaussian_ply(tmp_path / "x.ply", rec)
    with pytest.raises(ValueError, match="depth_quantile"):
        write_gaussian_ply(tmp_path / "x.ply", _random_gaussians(10, 0), depth_quantile=0.9)
    (tmp_path / "bad.ply").write_bytes(b"not a ply\n")
    with pytest.raises(ValueError, match="bad.ply"):
        read_gaussian_ply(tmp_path / "bad.ply")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ply"]


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
