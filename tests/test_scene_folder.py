"""The scene folder (``scene.json`` + one ``.npy`` per array, read memory-mapped): round trips
with the ``.npz``, the save/load rule, bad folders, :class:`SceneWriter`, and every consumer
(points, exports, Open3D, the nerfstudio dataparser, the Blender extension) on read-only maps."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from da3_plugins.core.export.registry import EXPORT_NAMES, write_exports
from da3_plugins.core import reconstruction
from da3_plugins.core.reconstruction import GaussianSet, Reconstruction, SceneFileError, SceneWriter
from da3_plugins.core.points import sample_indices
from da3_plugins.core.scene_io import ARRAY_KEYS, find_scene

from export_scene import _per_pixel_gaussians, rec as plane_rec  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rec(plane_rec):
    """The export tests' plane (conf, cropped originals) with a sky mask, per-pixel Gaussians
    (SH degree 1, their views) and options."""
    sky = np.zeros(plane_rec.depth.shape, bool)
    sky[:, :3] = True
    gs = _per_pixel_gaussians(plane_rec)
    k = np.random.default_rng(1).normal(size=(len(gs), 3, 4)).astype(np.float32) * 0.1
    gs = dataclasses.replace(gs, harmonics=k)
    return dataclasses.replace(plane_rec, sky=sky, gaussians=gs, is_metric=True,
                               options={"process_res": 504, "passes": 2, "image_files": ["a.jpg", "b.jpg", "c.jpg"],
                                        "unknown_key": [1, 2]})


def _fields(r: Reconstruction) -> dict:
    out = {f.name: getattr(r, f.name) for f in dataclasses.fields(Reconstruction) if f.name != "gaussians"}
    if r.gaussians is not None:
        out.update({f"gs_{f.name}": getattr(r.gaussians, f.name) for f in dataclasses.fields(GaussianSet)})
    return out


def _assert_same(a: Reconstruction, b: Reconstruction) -> None:
    fa, fb = _fields(a), _fields(b)
    assert fa.keys() == fb.keys()
    for key, va in fa.items():
        vb = fb[key]
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            np.testing.assert_array_equal(va, vb, err_msg=key)
        else:
            assert va == vb, key


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ round trips


def test_round_trip_npz_and_folder(rec, tmp_path):
    npz = rec.save(tmp_path / "scene.npz")
    folder = rec.save(tmp_path / "scene", form="folder")
    assert folder == tmp_path / "scene" and folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["scene.json"] + [f"{k}.npy" for k in ARRAY_KEYS])  # every array of the schema is here
    from_npz, from_folder = Reconstruction.load(npz), Reconstruction.load(folder)
    for back in (from_npz, from_folder):
        _assert_same(back, rec)
    assert from_folder.options.extra == {"unknown_key": [1, 2]} and from_folder.options.passes == 2
    # folder -> npz -> folder: the same arrays, and the same files
    again = Reconstruction.load(Reconstruction.load(folder).save(tmp_path / "again.npz"))
    _assert_same(again, rec)
    assert _files(from_npz.save(tmp_path / "second", form="folder")) == _files(folder)
    header = json.loads((folder / "scene.json").read_text())
    assert header["schema"] == "da3-plugins.reconstruction" and header["schema_version"] == 1
    assert header["image_names"] == ["a", "b", "c"] and header["is_metric"] is True
    # each .npy is a plain numpy file
    np.testing.assert_array_equal(np.load(folder / "depth.npy", allow_pickle=False), rec.depth)


def test_a_folder_loads_memory_mapped_and_read_only(rec, tmp_path):
    folder = rec.save(tmp_path / "scene", form="folder")
    back = Reconstruction.load(folder)
    for arr in (back.images, back.depth, back.conf, back.sky, back.gaussians.means, back.gaussians.harmonics,
                back.gaussians.view):
        assert isinstance(arr, np.memmap) and not arr.flags.writeable
    for arr in (back.extrinsics, back.intrinsics, back.pixel_transform, back.original_sizes):  # small: in memory
        assert not isinstance(arr, np.memmap)
    with pytest.raises(ValueError, match="read-only"):
        back.depth[0, 0, 0] = 1
    in_memory = Reconstruction.load(folder, mmap=False)
    assert not isinstance(in_memory.depth, np.memmap) and in_memory.depth.flags.writeable
    _assert_same(in_memory, back)
    _assert_same(Reconstruction.load(folder / "scene.json"), rec)  # a file browser picks the file


def test_save_rule(rec, tmp_path):
    assert rec.save(tmp_path / "a") == tmp_path / "a.npz"  # as always: .npz appended
    assert rec.save(tmp_path / "b.npz") == tmp_path / "b.npz"
    assert rec.save(tmp_path / "c", form="npz") == tmp_path / "c.npz"
    assert rec.save(tmp_path / "d", form="folder").is_dir()
    # auto: an existing scene folder is replaced in its own form
    small = dataclasses.replace(rec, gaussians=None, sky=None)
    assert rec.save(tmp_path / "d") == tmp_path / "d"
    assert small.save(tmp_path / "d") == tmp_path / "d" and not (tmp_path / "d" / "gs_means.npy").exists()
    _assert_same(Reconstruction.load(tmp_path / "d"), small)
    # auto: any other existing folder is not a scene: the npz goes beside it
    (tmp_path / "out").mkdir()
    assert rec.save(tmp_path / "out") == tmp_path / "out.npz"
    (tmp_path / "out" / "x.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a scene folder"):
        rec.save(tmp_path / "out", form="folder")
    with pytest.raises(ValueError, match=".npz"):
        rec.save(tmp_path / "e.npz", form="folder")
    with pytest.raises(ValueError, match="form"):
        rec.save(tmp_path / "e", form="zip")
    assert (tmp_path / "out" / "x.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "c.npz", "d", "out", "out.npz"]


def test_folder_save_is_atomic(rec, tmp_path, monkeypatch):
    old = rec.save(tmp_path / "scene", form="folder")
    before = _files(old)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        dataclasses.replace(rec, model="other").save(tmp_path / "scene", form="folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"] and _files(old) == before


def test_an_empty_gaussian_set_and_no_gaussians_round_trip(rec, tmp_path):
    empty = GaussianSet(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3, 4)), np.zeros(0))
    for gs in (empty, None):
        r = dataclasses.replace(rec, gaussians=gs)
        back = Reconstruction.load(r.save(tmp_path / f"s{gs is None}", form="folder"))
        _assert_same(back, r)


def test_find_scene(rec, tmp_path):
    folder = rec.save(tmp_path / "out" / "scene", form="folder")
    npz = rec.save(tmp_path / "out2" / "scene.npz")
    assert find_scene(folder) == folder and find_scene(folder / "scene.json") == folder
    assert find_scene(tmp_path / "out") == folder and find_scene(tmp_path / "out2") == npz
    assert find_scene(npz) == npz and find_scene(tmp_path) is None and find_scene(tmp_path / "none") is None


# ------------------------------------------------------------------------------ bad folders


def _break(folder: Path, case: str) -> str:
    """Damage a scene folder; returns the text the error must name."""
    meta = folder / "scene.json"
    header = json.loads(meta.read_text())
    if case == "no scene.json":
        meta.unlink()
        return "no scene.json"
    if case == "bad json":
        meta.write_text("{not json")
        return "scene.json: not readable JSON"
    if case == "foreign":
        meta.write_text(json.dumps({**header, "schema": "other"}))
        return "not a da3-plugins scene file"
    if case == "newer":
        meta.write_text(json.dumps({**header, "schema_version": 2}))
        return "newer"
    if case == "missing array":
        (folder / "depth.npy").unlink()
        return "'depth' is missing (no depth.npy)"
    if case == "truncated":
        data = (folder / "depth.npy").read_bytes()
        (folder / "depth.npy").write_bytes(data[: len(data) // 2])
        return "depth.npy: not a readable .npy array"
    if case == "bad shape":
        np.save(folder / "conf.npy", np.ones((3, 5, 5), np.float32))
        return "conf: expected shape"
    if case == "pickled":
        np.save(folder / "conf.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return "conf.npy: not a readable .npy array"
    if case == "names":
        meta.write_text(json.dumps({**header, "image_names": ["a"]}))
        return "image_names: expected 3 names"
    if case == "gaussians":
        (folder / "gs_scales.npy").unlink()
        return "'gs_scales' is missing"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no scene.json", "bad json", "foreign", "newer", "missing array", "truncated",
                                  "bad shape", "pickled", "names", "gaussians"])
def test_bad_folders_give_one_line_naming_the_folder(rec, tmp_path, case):
    folder = rec.save(tmp_path / "myscene", form="folder")
    expected = _break(folder, case)
    with pytest.raises(SceneFileError) as info:
        Reconstruction.load(folder)
    msg = str(info.value)
    assert "\n" not in msg and str(folder) in msg and expected in msg, msg


def test_a_missing_path_is_a_scene_file_error(tmp_path):
    with pytest.raises(SceneFileError, match="no such scene file"):
        Reconstruction.load(tmp_path / "nothing")


# ------------------------------------------------------------------------------ SceneWriter


def _write_in_chunks(rec: Reconstruction, path: Path, order=((3, 3), (0, 2), (2, 3)), gs_chunks=(0, 5000, 5001)):
    n, h, w = rec.depth.shape
    with SceneWriter(path, n, h, w, conf=True, sky=True) as sw:
        for a, b in order:  # rows in any order, any chunk size; view 2 written twice
            sl = slice(a, b)
            if a == b:
                continue
            sw.write_views(a, images=rec.images[sl], depth=rec.depth[sl], conf=rec.conf[sl], sky=rec.sky[sl],
                           extrinsics=rec.extrinsics[sl], intrinsics=rec.intrinsics[sl],
                           original_sizes=rec.original_sizes[sl], pixel_transform=rec.pixel_transform[sl])
        gs = rec.gaussians
        cuts = list(gs_chunks) + [len(gs)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            sw.add_gaussians(means=gs.means[a:b], scales=gs.scales[a:b], rotations=gs.rotations[a:b],
                             harmonics=gs.harmonics[a:b], opacities=gs.opacities[a:b], view=gs.view[a:b])
        assert not path.exists()  # nothing at the target until finish
        return sw.finish(image_names=rec.image_names, is_metric=rec.is_metric, model=rec.model, options=rec.options)


def test_scene_writer_view_by_view_equals_save(rec, tmp_path):
    saved = rec.save(tmp_path / "saved", form="folder")
    written = _write_in_chunks(rec, tmp_path / "written")
    assert _files(written) == _files(saved)
    back = Reconstruction.load(written)
    _assert_same(back, rec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved", "written"]  # no temporary left


def test_scene_writer_open_maps_and_defaults(tmp_path):
    n, h, w = 3, 4, 5
    with SceneWriter(tmp_path / "s", n, h, w, conf=False) as sw:
        assert sw.conf is None and sw.sky is None
        for i in range(n):
            sw.write_views(i, images=np.full((1, h, w, 3), i, np.uint8), depth=np.ones((1, h, w), np.float32),
                           extrinsics=np.eye(4)[None], intrinsics=np.eye(3)[None])
        sw.depth[:] *= 2.0  # the producer may change what it wrote (a late global scale)
        path = sw.finish()
    back = Reconstruction.load(path)
    assert back.conf is None and back.gaussians is None and back.image_names == ["view_0000", "view_0001", "view_0002"]
    np.testing.assert_array_equal(back.depth, 2.0)
    np.testing.assert_array_equal(back.original_sizes, [[h, w]] * n)
    np.testing.assert_array_equal(back.pixel_transform, np.tile(np.eye(3), (n, 1, 1)))


def test_scene_writer_abort_and_errors_leave_nothing(rec, tmp_path):
    n, h, w = rec.depth.shape
    target = tmp_path / "scene"
    sw = SceneWriter(target, n, h, w)
    sw.write_views(0, images=rec.images, depth=rec.depth, conf=rec.conf, extrinsics=rec.extrinsics,
                   intrinsics=rec.intrinsics)
    sw.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="closed"):
        sw.write_views(0, images=rec.images, depth=rec.depth, conf=rec.conf, extrinsics=rec.extrinsics,
                       intrinsics=rec.intrinsics)
    with pytest.raises(RuntimeError, match="boom"):
        with SceneWriter(target, n, h, w) as sw:
            raise RuntimeError("boom")
    with SceneWriter(target, n, h, w):
        pass  # left without finish: removed
    assert list(tmp_path.iterdir()) == []
    old = rec.save(target, form="folder")
    before = _files(old)
    with SceneWriter(target, n, h, w) as sw:
        with pytest.raises(ValueError, match="conf is required"):
            sw.write_views(0, images=rec.images, depth=rec.depth, extrinsics=rec.extrinsics, intrinsics=rec.intrinsics)
        with pytest.raises(ValueError, match="sky was not declared"):
            sw.write_views(0, images=rec.images, depth=rec.depth, conf=rec.conf, sky=rec.sky,
                           extrinsics=rec.extrinsics, intrinsics=rec.intrinsics)
        with pytest.raises(ValueError, match="outside"):
            sw.write_views(2, images=rec.images, depth=rec.depth, conf=rec.conf, extrinsics=rec.extrinsics,
                           intrinsics=rec.intrinsics)
        with pytest.raises(ValueError, match="depth: expected shape"):
            sw.write_views(0, images=rec.images[:1], depth=rec.depth[:2], conf=rec.conf[:1],
                           extrinsics=rec.extrinsics[:1], intrinsics=rec.intrinsics[:1])
        sw.write_views(0, images=rec.images[:1], depth=rec.depth[:1], conf=rec.conf[:1],
                       extrinsics=rec.extrinsics[:1], intrinsics=rec.intrinsics[:1])
        g = rec.gaussians
        sw.add_gaussians(means=g.means, scales=g.scales, rotations=g.rotations, harmonics=g.harmonics,
                         opacities=g.opacities)
        with pytest.raises(ValueError, match="view for every chunk"):
            sw.add_gaussians(means=g.means, scales=g.scales, rotations=g.rotations, harmonics=g.harmonics,
                             opacities=g.opacities, view=g.view)
        with pytest.raises(ValueError, match="views 1, 2 were never written"):
            sw.finish()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"] and _files(old) == before
    with pytest.raises(FileExistsError):
        SceneWriter(target, n, h, w, overwrite=False)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "p.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not a scene folder"):
        SceneWriter(tmp_path / "photos", n, h, w)
    with pytest.raises(ValueError, match="uint8"):
        with SceneWriter(tmp_path / "x", n, h, w, conf=False) as sw:
            sw.write_views(0, images=rec.images.astype(np.float32), depth=rec.depth, extrinsics=rec.extrinsics,
                           intrinsics=rec.intrinsics)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "scene"]


# ------------------------------------------------------------------------------ consumers


def test_points_and_masks_on_memory_maps(rec, tmp_path):
    back = Reconstruction.load(rec.save(tmp_path / "scene", form="folder"))
    for args in [dict(), dict(conf_threshold="auto", stride=2), dict(conf_threshold=2.0, drop_sky=False),
                 dict(views=[2, 0]), dict(views=[])]:
        a, b = rec.points(**args), back.points(**args)
        for f in ("positions", "colors", "confidence", "view"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f"{args} {f}")
    np.testing.assert_array_equal(back.valid_mask(2.0), rec.valid_mask(2.0))
    np.testing.assert_array_equal(back.valid_mask(2.0, views=slice(1, 3)), rec.valid_mask(2.0)[1:3])
    np.testing.assert_array_equal(back.camera_points(), rec.camera_points())
    np.testing.assert_array_equal(back.world_points(), rec.world_points())


def test_points_and_samples_in_blocks_of_views_equal_one_block(rec, monkeypatch):
    whole = rec.points(conf_threshold=2.0, stride=3)
    pick = sample_indices(len(whole), 100, seed=7)
    samples = {"all": (rec.sample_points(10**6, 2.0, 3, seed=7), whole),
               "some": (rec.sample_points(100, 2.0, 3, seed=7), reconstruction._subset(whole, pick))}
    monkeypatch.setattr(reconstruction, "VIEW_BLOCK_PIXELS", 1)  # a block is one view: two passes
    parts = rec.points(conf_threshold=2.0, stride=3)
    for name, ((one_pass, total), expected) in samples.items():
        assert total == len(whole)
        two_passes, total2 = rec.sample_points(100 if name == "some" else 10**6, 2.0, 3, seed=7, finite=True)
        for f in ("positions", "colors", "confidence", "view"):
            np.testing.assert_array_equal(getattr(parts, f), getattr(whole, f))
            np.testing.assert_array_equal(getattr(one_pass, f), getattr(expected, f))
            np.testing.assert_array_equal(getattr(two_passes, f), getattr(expected, f))


def test_every_export_of_a_folder_scene_equals_the_npz_scenes(rec, tmp_path):
    npz = Reconstruction.load(rec.save(tmp_path / "scene.npz"))
    folder = Reconstruction.load(rec.save(tmp_path / "scene", form="folder"))
    names = [n for n in EXPORT_NAMES if n != "gs-video"]  # the video: below, one frame
    a = write_exports(npz, tmp_path / "from_npz", names)
    b = write_exports(folder, tmp_path / "from_folder", names)
    assert a == b
    fa, fb = _files(tmp_path / "from_npz"), _files(tmp_path / "from_folder")
    assert fa.keys() == fb.keys() and len(fa) > 20
    for key in fa:
        assert fa[key] == fb[key], key
    from da3_plugins.core.export.depth_images import write_depth_images
    from da3_plugins.core.export.nerfstudio import write_nerfstudio
    write_nerfstudio(tmp_path / "ns_npz", npz, depth=True)
    write_nerfstudio(tmp_path / "ns_folder", folder, depth=True)
    assert _files(tmp_path / "ns_npz") == _files(tmp_path / "ns_folder")
    write_depth_images(tmp_path / "d", folder, unit=0.01)
    assert json.loads((tmp_path / "d" / "depth_units.json").read_text())["unit"] == 0.01


def test_the_video_renders_from_memory_maps(rec, tmp_path):
    pytest.importorskip("cv2")
    from da3_plugins.core.export.video import write_gaussian_video

    folder = Reconstruction.load(rec.save(tmp_path / "scene", form="folder"))
    path = write_gaussian_video(tmp_path / "v.mp4", folder, frames=2, scale=0.5)
    assert path.stat().st_size > 0


@pytest.mark.host
def test_open3d_on_a_folder_scene(rec, tmp_path):
    pytest.importorskip("open3d")
    from da3_plugins import open3d as da3o3d

    back = Reconstruction.load(rec.save(tmp_path / "scene", form="folder"))
    pcd = da3o3d.to_point_cloud(back, stride=2, estimate_normals=True)
    assert len(pcd.points) == len(rec.points(stride=2))
    assert len(da3o3d.to_rgbd_images(back, conf_threshold=2.0)) == 3
    assert len(da3o3d.to_camera_parameters(back)[0]) == 3
    mesh = da3o3d.fuse_tsdf(back)
    assert len(mesh.vertices) > 0
    assert da3o3d.camera_frusta(back)


@pytest.mark.host
def test_nerfstudio_dataparser_reads_a_folder_scene(tmp_path):
    pytest.importorskip("nerfstudio")
    from da3_plugins.core.synthetic import make_scene
    from da3_plugins.nerfstudio.dataparser import DA3DataParserConfig

    scene = make_scene(num_views=4, height=42, width=56, seed=2)
    rec = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32))
    rec.save(tmp_path / "ref" / "scene.npz")
    rec.save(tmp_path / "out" / "scene", form="folder")
    (tmp_path / "out" / "preview.png").write_bytes(b"")  # an output folder holds pictures too

    def outputs(data):
        cfg = DA3DataParserConfig(data=data, train_split_fraction=1.0)
        return cfg.setup().get_dataparser_outputs(split="train")

    ref = outputs(tmp_path / "ref" / "scene.npz")
    for data in (tmp_path / "out" / "scene", tmp_path / "out"):
        out = outputs(data)
        assert [Path(f).name for f in out.image_filenames] == [Path(f).name for f in ref.image_filenames]
        assert all(Path(f).is_file() for f in out.image_filenames)
        np.testing.assert_array_equal(out.cameras.camera_to_worlds.numpy(), ref.cameras.camera_to_worlds.numpy())
        np.testing.assert_array_equal(out.metadata["points3D_xyz"].numpy(), ref.metadata["points3D_xyz"].numpy())
        assert [Path(f).read_bytes() for f in out.metadata["depth_filenames"]] == \
               [Path(f).read_bytes() for f in ref.metadata["depth_filenames"]]
    # the cache goes beside the scene folder, never into it
    assert sorted(p.name for p in (tmp_path / "out" / "scene").iterdir()) == sorted(
        p.name for p in (tmp_path / "out" / "scene").iterdir() if p.suffix in (".npy", ".json"))


def test_the_blender_extensions_vendored_reader_reads_a_folder_with_numpy_only(rec, tmp_path):
    from da3_plugins.blender_build import VENDORED, build_extension

    assert "scene_io.py" in VENDORED
    folder = rec.save(tmp_path / "scene", form="folder")
    with zipfile.ZipFile(build_extension(tmp_path / "dist")) as zf:
        zf.extractall(tmp_path / "ext", [n for n in zf.namelist() if n.startswith("_vendor/")])
    code = ("import sys; from _vendor.reconstruction import Reconstruction; import numpy as np; "
            f"r = Reconstruction.load({str(folder)!r}); "
            "assert isinstance(r.depth, np.memmap) and len(r.points()) > 0 and r.gaussians is not None; "
            "bad = [m for m in ('torch', 'PIL', 'da3_plugins') if m in sys.modules]; assert not bad, bad; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "ext", capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "ext")}, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


_BLENDER_IMPORT = """
import json, sys
import bpy
zip_path, folder = sys.argv[1], sys.argv[2]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
out = {}
for name, path in (("folder", folder), ("json", folder + "/scene.json")):
    before = set(bpy.data.collections.keys())
    out[name + "_result"] = sorted(bpy.ops.import_scene.da3_npz(filepath=path, threshold_mode="NONE"))
    (coll,) = [bpy.data.collections[c] for c in set(bpy.data.collections.keys()) - before]
    out[name + "_name"] = coll.name.split(".")[0]
    out[name + "_cameras"] = sum(o.type == "CAMERA" for o in coll.objects)
    out[name + "_points"] = max((len(o.data.vertices) for o in coll.objects if o.type == "MESH"), default=0)
print(json.dumps(out))
"""


@pytest.mark.host
def test_blender_imports_a_scene_folder(tmp_path):
    pytest.importorskip("bpy")
    from da3_plugins.blender_build import build_extension
    from da3_plugins.core.synthetic import make_scene

    scene = make_scene(num_views=3, height=42, width=56, seed=4)
    rec = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32))
    folder = rec.save(tmp_path / "myscene", form="folder")
    zip_path = build_extension(tmp_path / "dist")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               HOME=str(tmp_path / "home"))
    res = subprocess.run([sys.executable, "-c", _BLENDER_IMPORT, str(zip_path), str(folder)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("folder", "json"):
        assert out[f"{name}_result"] == ["FINISHED"] and out[f"{name}_name"] == "myscene"
        assert out[f"{name}_cameras"] == 3 and out[f"{name}_points"] == rec.depth.size
