"""Every export read back by an independent reader: plyfile, trimesh, pygltflib, Pillow (the
COLMAP, nerfstudio and video exports are in test_exports_folders.py).  Also: interrupted
writers leave nothing, no writer modifies the reconstruction, bad input gives a clear error."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import conventions as conv
from da3_plugins.core.export import (read_gaussian_ply, write_colmap, write_depth_images, write_gaussian_ply,
                                     write_glb, write_nerfstudio, write_point_ply)
from da3_plugins.core.reconstruction import PointCloud
from helpers import failing_open

from export_scene import (H, W, _assert_unchanged, _per_pixel_gaussians, _ply_header,  # noqa: F401  (rec: a fixture)
                          _random_gaussians, _snapshot, rec)


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


def test_depth_images(rec, tmp_path):
    rec.sky = np.zeros((3, H, W), bool)
    rec.sky[1, :5, :7] = True
    before = _snapshot(rec)
    folder = write_depth_images(tmp_path / "depth", rec)
    _assert_unchanged(rec, before)
    names = sorted(p.name for p in folder.iterdir())
    pictures = ["depth_units.json"] + [f"{s}_{kind}.png" for s in "abc"
                                       for kind in ("depth", "conf", "depth16", "preview")]
    # the folder is also a training-data scene (tests/test_pseudo_labels.py reads it back)
    training = ["cameras.json", "images"] + [f"{s}_{kind}.npy" for s in "abc" for kind in ("depth", "conf")]
    assert names == sorted(pictures + training)
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["a.png", "b.png", "c.png"]
    only_pictures = write_depth_images(tmp_path / "pictures", rec, training=False)
    assert sorted(p.name for p in only_pictures.iterdir()) == sorted(pictures)
    for name in pictures:
        assert (only_pictures / name).read_bytes() == (folder / name).read_bytes(), name
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

    def half_rows(self, fields):  # the header and half the rows, then a failure
        self.fh.write(b"\x00" * (self.dtype.itemsize * (len(fields[0][1]) // 2)))
        raise RuntimeError("interrupted")

    with monkeypatch.context() as m:
        m.setattr(ply_mod._RowWriter, "write", half_rows)
        with pytest.raises(RuntimeError):
            write_point_ply(tmp_path / "p.ply", rec)
        with pytest.raises(RuntimeError):
            write_gaussian_ply(tmp_path / "g.ply", rec)

    FailingFile = failing_open(1, RuntimeError("interrupted"))  # writes the first chunk, fails on the second
    with monkeypatch.context() as m:
        m.setattr(gltf_mod, "open", FailingFile, raising=False)
        with pytest.raises(RuntimeError):
            write_glb(tmp_path / "s.glb", rec)

    with monkeypatch.context() as m:  # cameras and images written, then points3D fails
        m.setattr(colmap_mod, "_points_bin", _fail_after(1, colmap_mod._points_bin))
        with pytest.raises(RuntimeError):
            write_colmap(tmp_path / "sparse", rec)

    with monkeypatch.context() as m:  # the second picture fails
        m.setattr(ns_mod, "save_png", _fail_after(2, ns_mod.save_png))
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
