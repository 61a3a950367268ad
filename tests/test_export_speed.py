"""The fast points and exports give the numbers of the straightforward code they replaced.

Each fast path (points of chosen pixels only, streamed writers, the streamed percentile, the
Turbo table, the numpy PNG encoder, threads) is checked against a plain reference written
here the way the code used to be: whole views back-projected then masked, one packed table
for a PLY, ``np.percentile`` of a copy, the Turbo polynomial, Pillow.  Equal means equal bit for
bit (PNGs: the same pixels).  No timing here: ``benchmarks/bench_exports.py`` times them.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import points as points_mod
from da3_plugins.core import reconstruction as rec_mod
from da3_plugins.core.export import depth_images as di
from da3_plugins.core.export import gltf as gltf_mod
from da3_plugins.core.export import ply as ply_mod
from da3_plugins.core.export import write_depth_images, write_glb, write_nerfstudio, write_point_ply
from da3_plugins.core.points import depth_to_points, finite_percentiles, sample_indices
from da3_plugins.core.reconstruction import PointCloud, Reconstruction
from helpers import failing_open

FIELDS = ("positions", "colors", "confidence", "view")


@pytest.fixture
def scene():
    """Seven views of 23x31 with everything a filter meets: sky, NaN / zero / negative / inf
    depth, NaN confidence, no-confidence ties, two cameras of different intrinsics."""
    rng = np.random.default_rng(3)
    n, h, w = 7, 23, 31
    ext = np.zeros((n, 3, 4))
    for i in range(n):
        a = rng.normal(size=3) * 0.3
        k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
        r, _ = np.linalg.qr(np.eye(3) + k)
        ext[i] = np.concatenate([r, rng.normal(size=(3, 1))], 1)
    kk = np.tile(np.array([[30.0, 0, 15.2], [0, 31.0, 11.7], [0, 0, 1]]), (n, 1, 1))
    kk[3] = [[20.0, 0.3, 14.0], [0, 22.0, 10.0], [0, 0, 1]]
    depth = (1 + 3 * rng.random((n, h, w))).astype(np.float32)
    depth[0, :2] = np.nan
    depth[1, 5, :] = 0
    depth[2, :, 3] = -1
    depth[4, 7, 7] = np.inf
    conf = (1 + 3 * rng.random((n, h, w))).astype(np.float32)
    conf[5, 1] = np.nan
    conf[6, 2:4] = 2.0  # ties at a threshold
    sky = rng.random((n, h, w)) < 0.1
    return Reconstruction(images=rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8), depth=depth, conf=conf,
                          sky=sky, extrinsics=ext, intrinsics=kk)


def reference_points(rec: Reconstruction, conf_threshold=None, stride=1, drop_sky=True, views=None) -> PointCloud:
    """The former ``points()``: every pixel of the views back-projected, then masked."""
    thr = points_mod.resolve_conf_threshold(conf_threshold, rec.conf)
    idx = list(range(rec.num_views)) if views is None else list(views)
    if not idx:
        return PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), np.zeros(0, np.float32),
                          np.zeros(0, np.int32))
    mask = rec.valid_mask(thr, drop_sky)[idx][:, ::stride, ::stride]
    world = depth_to_points(rec.depth[idx], rec.intrinsics[idx], rec.extrinsics[idx], stride=stride)
    view = np.broadcast_to(np.array(idx, np.int32)[:, None, None], mask.shape)
    conf = rec.conf[idx][:, ::stride, ::stride] if rec.conf is not None else np.ones(mask.shape, np.float32)
    return PointCloud(world[mask], rec.images[idx][:, ::stride, ::stride][mask], conf[mask].astype(np.float32),
                      view[mask])


def assert_same(a: PointCloud, b: PointCloud, what="") -> None:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, (what, f, x.dtype, y.dtype, x.shape, y.shape)
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), (what, f)


def concat(pieces) -> PointCloud:
    pieces = list(pieces)
    return PointCloud(*(np.concatenate([getattr(p, f) for p in pieces]) for f in FIELDS))


ARGS = [dict(), dict(conf_threshold="auto"), dict(conf_threshold=2.0), dict(stride=2), dict(stride=3, drop_sky=False),
        dict(views=[5, 1, 1, 0]), dict(views=[]), dict(conf_threshold=2.0, stride=4, views=[6, 2])]


@pytest.mark.parametrize("form", ["memory", "folder"])
def test_points_equal_the_masked_whole_views(scene, tmp_path, form, monkeypatch):
    rec = scene if form == "memory" else Reconstruction.load(scene.save(tmp_path / "s", form="folder"))
    for args in ARGS:
        ref = reference_points(scene, **args)
        assert_same(rec.points(**args), ref, args)
        assert int(rec.point_counts(**args).sum()) == len(ref)
        for cap in (1, 50, 10**6):  # pieces of whole views: one view, a few, all
            pieces = list(rec.iter_points(**args, max_points=cap))
            assert all(len(p) for p in pieces)
            if pieces:
                assert_same(concat(pieces), ref, (args, cap))
            else:
                assert len(ref) == 0
    monkeypatch.setattr(rec_mod, "VIEW_BLOCK_PIXELS", 7)  # the default piece size is read when called
    assert_same(concat(rec.iter_points(conf_threshold=2.0)), reference_points(scene, 2.0))


def test_sample_indices_are_a_uniform_sorted_subset():
    for total, count in [(11_400_000, 1_000_000), (1000, 999), (1000, 500), (1000, 3), (5, 9), (0, 3), (7, 0)]:
        s = sample_indices(total, count, seed=1)
        assert len(s) == min(total, count) and (np.diff(s) > 0).all()
        assert len(s) == 0 or (s[0] >= 0 and s[-1] < total)
        np.testing.assert_array_equal(s, sample_indices(total, count, seed=1))  # repeatable
    assert not np.array_equal(sample_indices(1000, 10, 1), sample_indices(1000, 10, 2))
    for total, count in [(20, 7), (10, 8)]:  # both branches: every index equally likely
        hits = np.zeros(total)
        for seed in range(4000):
            hits[sample_indices(total, count, seed)] += 1
        np.testing.assert_allclose(hits / 4000, count / total, atol=0.035)
    with pytest.raises(ValueError, match="sample_indices"):
        sample_indices(-1, 3)


def test_sample_points_equal_a_sample_of_the_reference(scene):
    for max_points, thr, stride, finite in [(10**6, "auto", 1, True), (100, None, 2, False), (37, 2.0, 1, True)]:
        ref = reference_points(scene, thr, stride)
        if finite:
            ref = rec_mod._subset(ref, np.isfinite(ref.positions).all(1))
        got, total = scene.sample_points(max_points, thr, stride, seed=5, finite=finite)
        assert total == len(ref)
        if total > max_points:
            ref = rec_mod._subset(ref, sample_indices(total, max_points, seed=5))
        assert_same(got, ref, (max_points, thr, stride, finite))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_sample_points_drops_points_that_overflow(scene):
    scene.intrinsics[2, :2, :2] = np.diag([0.01, 0.01])  # rays of length ~1000 ...
    scene.depth[2, 4:9] = 1e36  # ... and finite depth: points that overflow float32 to inf
    ref = reference_points(scene)
    keep = np.isfinite(ref.positions).all(1)
    assert not keep.all()
    got, total = scene.sample_points(10**6, finite=True)
    assert total == keep.sum()
    assert_same(got, rec_mod._subset(ref, keep))
    got, total = scene.sample_points(50, finite=True, seed=2)
    assert_same(got, rec_mod._subset(rec_mod._subset(ref, keep),
                                      sample_indices(total, 50, seed=2)))


def test_finite_percentiles_equal_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    arrays = []
    for n in (1, 2, 3, 10, 1001, 5000):
        arrays += [rng.normal(size=n), rng.integers(-3, 4, n).astype(float), 1 + 5 * rng.random(n)]
    wild = rng.normal(size=3000) * 1e30
    wild[::7], wild[::11], wild[::13], wild[::17] = np.nan, np.inf, -0.0, -np.inf
    arrays += [wild, np.full(5, np.nan)]
    for block in (1 << 22, 97):
        monkeypatch.setattr(points_mod, "PERCENTILE_BLOCK", block)
        for a in arrays:
            a32 = a.astype(np.float32).reshape(-1, 1) if len(a) % 2 else a.astype(np.float32)
            finite = a32[np.isfinite(a32)]
            for q in ([40, 90], [0, 100], [2, 98], [50], [33.3, 66.7, 99.99]):
                got = finite_percentiles(a32, q)
                if finite.size == 0:
                    assert got is None
                    continue
                ref = np.percentile(finite, q)
                assert got.dtype == ref.dtype and np.array_equal(got.view(np.uint64), ref.view(np.uint64)), (len(a), q)
    f64 = rng.normal(size=100)  # other dtypes: numpy's own way
    assert np.array_equal(finite_percentiles(f64, [40, 90]), np.percentile(f64, [40, 90]))


def reference_turbo(t):
    """The Turbo polynomial as the colour maps always computed it."""
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    powers = np.stack([t**i for i in range(6)], -1)
    rgb = np.stack([powers @ np.array(c) for c in (di._TURBO_R, di._TURBO_G, di._TURBO_B)], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def test_the_turbo_table_gives_the_polynomials_colours():
    rng = np.random.default_rng(1)
    t = np.concatenate([np.linspace(0, 1, 1 << 20), rng.random(1 << 20), np.arange(1 << 16) / (1 << 16),
                        [-1.0, 0.0, 1.0, 2.0, np.nextafter(1.0, 0)]])
    np.testing.assert_array_equal(di.turbo(t), reference_turbo(t))
    np.testing.assert_array_equal(di.turbo(t[:12].reshape(3, 4)), reference_turbo(t[:12].reshape(3, 4)))
    assert 0.95 < di._turbo_table()[1].mean() < 1  # most cells are sure


def test_colour_maps_equal_the_reference(scene):
    def reference(values, valid, transform):
        ok = np.isfinite(values) & (values > 0) & valid
        out = np.zeros(values.shape + (3,), np.uint8)
        if ok.any():
            v = transform(values[ok]).astype(np.float64)
            lo, hi = np.percentile(v, 2), np.percentile(v, 98)
            out[ok] = reference_turbo((v - lo) / max(hi - lo, 1e-12))
        return out

    for i in range(scene.num_views):
        valid = ~scene.sky[i]
        for valid_mask in (valid, np.ones_like(valid), np.zeros_like(valid)):
            np.testing.assert_array_equal(di.colorize_depth(scene.depth[i], valid_mask),
                                          reference(scene.depth[i], valid_mask, lambda d: 1.0 / d))
            np.testing.assert_array_equal(di.colorize_confidence(scene.conf[i], valid_mask),
                                          reference(scene.conf[i], valid_mask, np.log))


@pytest.mark.parametrize("shape,dtype", [((23, 31, 3), np.uint8), ((1, 1, 3), np.uint8), ((5, 2), np.uint8),
                                         ((17, 9), np.uint16), ((1, 300), np.uint16)])
def test_png_encoder_round_trips_through_pillow_and_opencv(shape, dtype):
    cv2 = pytest.importorskip("cv2")
    a = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    data = b"".join(di.encode_png(a))
    back = Image.open(io.BytesIO(data))
    back.load()  # Pillow checks the chunks' CRCs
    np.testing.assert_array_equal(np.asarray(back), a)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., ::-1] if decoded.ndim == 3 else decoded, a)
    with pytest.raises(ValueError, match="image"):
        di.encode_png(a.astype(np.float32))


def reference_point_ply(cloud: PointCloud) -> bytes:
    """The former writer: one packed table of every row after the header."""
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
                      ("confidence", "<f4"), ("view", "<i4")])
    rows = np.empty(len(cloud), dtype)
    for k, n in enumerate("xyz"):
        rows[n] = cloud.positions[:, k]
    for k, n in enumerate(("red", "green", "blue")):
        rows[n] = cloud.colors[:, k]
    rows["confidence"], rows["view"] = cloud.confidence, cloud.view
    header = ["ply", "format binary_little_endian 1.0", "comment da3-plugins point cloud (world frame of the "
              "reconstruction)", f"element vertex {len(rows)}"]
    header += [f"property {t} {n}" for n, t in zip(dtype.names, ["float"] * 3 + ["uchar"] * 3 + ["float", "int"])]
    return ("\n".join(header + ["end_header"]) + "\n").encode("ascii") + rows.tobytes()


def test_point_ply_streamed_equals_one_table(scene, tmp_path, monkeypatch):
    for small in (False, True):
        if small:  # many pieces and many row chunks
            monkeypatch.setattr(ply_mod, "POINTS_AT_A_TIME", 100)
            monkeypatch.setattr(ply_mod, "ROWS_AT_A_TIME", 33)
        for args in (dict(), dict(conf_threshold="auto", stride=2)):
            path = write_point_ply(tmp_path / "p.ply", scene, **args)
            assert path.read_bytes() == reference_point_ply(reference_points(scene, **args))
        cloud = reference_points(scene)
        assert write_point_ply(tmp_path / "c.ply", cloud).read_bytes() == reference_point_ply(cloud)


def test_glb_chunks_do_not_change_the_file(scene, tmp_path, monkeypatch):
    for args in (dict(), dict(recenter=True, max_points=100), dict(cameras=False, conf_threshold=None)):
        whole = write_glb(tmp_path / "a.glb", scene, **args).read_bytes()
        with monkeypatch.context() as m:
            m.setattr(gltf_mod, "_CHUNK", 7)
            assert write_glb(tmp_path / "b.glb", scene, **args).read_bytes() == whole


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_threads_do_not_change_the_folders(scene, tmp_path):
    one = write_depth_images(tmp_path / "d1", scene, workers=1)
    three = write_depth_images(tmp_path / "d3", scene, workers=3)
    assert _files(one) == _files(three)
    one = write_nerfstudio(tmp_path / "n1", scene, depth=True, workers=1)
    three = write_nerfstudio(tmp_path / "n3", scene, depth=True, workers=3)
    assert _files(one) == _files(three)


def test_depth_pictures_equal_pillows_pixels(scene, tmp_path):
    folder = write_depth_images(tmp_path / "d", scene)
    for i, stem in enumerate(di.file_stems(scene)):
        valid = scene.valid_mask(None, drop_sky=True)[i]
        coloured = di.colorize_depth(scene.depth[i], valid)
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{stem}_depth.png")), coloured)
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{stem}_preview.png")),
                                      np.concatenate([scene.images[i], coloured], 1))
        np.testing.assert_array_equal(np.asarray(Image.open(folder / "images" / f"{stem}.png")), scene.images[i])
        unit = di.default_depth_unit(di.largest_depth(scene))
        q, _ = di.depth_to_uint16(np.where(valid, scene.depth[i], np.nan), unit)
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"{stem}_depth16.png")), q)


def test_map_views_keeps_order_and_stops_at_the_first_error():
    assert di.map_views(lambda i: i * i, 20, workers=3) == [i * i for i in range(20)]
    started = []

    def fail_at_two(i):
        started.append(i)
        if i == 2:
            raise RuntimeError("view 2")
        return i

    with pytest.raises(RuntimeError, match="view 2"):
        di.map_views(fail_at_two, 10_000, workers=2)
    assert len(started) < 10_000  # the rest were cancelled


def test_a_failed_write_in_the_ply_writer_thread_leaves_nothing(scene, tmp_path, monkeypatch):
    FailingFile = failing_open(3, OSError("no space left"))  # the header and two tables, then the disk is full
    monkeypatch.setattr(ply_mod, "ROWS_AT_A_TIME", 50)
    monkeypatch.setattr(ply_mod, "open", FailingFile, raising=False)
    with pytest.raises(OSError, match="no space"):
        write_point_ply(tmp_path / "p.ply", scene)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_colmap_leaves_out_points_that_overflow(scene, tmp_path):
    from da3_plugins.core.export import write_colmap

    scene.intrinsics[2, :2, :2] = np.diag([1e-300, 1e-300])  # float64 rays of length ~1e300 ...
    scene.depth[2, 4:9] = 1e36  # ... times this depth: inf even in float64
    world = depth_to_points(scene.depth, scene.intrinsics, scene.extrinsics, stride=2, dtype=np.float64)
    ref = world[scene.valid_mask()[:, ::2, ::2]]
    finite = np.isfinite(ref).all(1)
    assert not finite.all()
    folder = write_colmap(tmp_path / "sparse", scene, conf_threshold=None, stride=2, binary=False)
    lines = [ln for ln in (folder / "points3D.txt").read_text().splitlines() if not ln.startswith("#")]
    assert len(lines) == finite.sum()
    xyz = np.array([[float(x) for x in ln.split()[1:4]] for ln in lines])
    np.testing.assert_array_equal(xyz, ref[finite])  # 17 digits: the float64 numbers themselves
