"""The ``da3p`` command: end to end on a small random-weight model, and every bad input the
issue lists (exit code 2, one clear line naming the file or argument, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from da3_plugins.cli import main
from da3_plugins.core import Reconstruction, random_model

RES = ["--process-res", "56"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(random_model("da3-small", seed=0).save_pretrained(tmp_path_factory.mktemp("model")))


def _photo(path: Path, size=(80, 60), mode="RGB", seed=0, **save):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path, **save)
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _photo(folder / f"img{i + 1}.jpg", seed=i)
    (folder / "notes.txt").write_text("not an image; skipped in a folder")
    return folder


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _nothing_written(out_dir: Path):
    assert not out_dir.exists()
    leftovers = [p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")]
    assert leftovers == []


# ----------------------------------------------------------------------------- success


def test_reconstruct_folder_writes_scene(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(["reconstruct", photos, "-o", out, "--model", model_dir, "--export", "scene",
                              "--progress", "none", "--device", "cpu", *RES], capsys)
    assert code == 0, err
    rec = Reconstruction.load(out / "scene.npz")
    assert len(rec) == 3 and rec.image_names == ["img1", "img2", "img3"]
    assert rec.depth.shape == (3, 42, 56)
    assert tuple(rec.original_sizes[0]) == (60, 80)
    assert "scene.npz" in stdout and "open with" in stdout


def test_progress_json_lines(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = _run(["reconstruct", photos, "-o", out, "--model", model_dir, "--export", "scene",
                            "--progress", "json", *RES], capsys)
    assert code == 0
    events = [json.loads(line) for line in stdout.splitlines()]
    assert {e["event"] for e in events} >= {"progress", "done"}
    assert {e["stage"] for e in events if e["event"] == "progress"} >= {"model", "infer", "export"}
    done = events[-1]
    assert done["event"] == "done" and Path(done["files"]["scene"]).is_file()


def test_known_cameras_from_files(model_dir, photos, tmp_path, capsys):
    from helpers import random_cameras

    ext, k = random_cameras(1, 3, 60, 80, seed=1)
    np.save(tmp_path / "poses.npy", ext[0].numpy())
    (tmp_path / "k.json").write_text(json.dumps({"intrinsics": k[0].tolist()}))
    out = tmp_path / "out"
    code, _, err = _run(["reconstruct", photos, "-o", out, "--model", model_dir, "--export", "scene",
                         "--poses", tmp_path / "poses.npy", "--intrinsics", tmp_path / "k.json",
                         "--progress", "none", *RES], capsys)
    assert code == 0, err
    rec = Reconstruction.load(out / "scene.npz")
    np.testing.assert_allclose(rec.extrinsics, ext[0].numpy()[:, :3, :].astype(np.float64), atol=1e-6)
    np.testing.assert_allclose(rec.intrinsics_original, k[0].numpy(), rtol=1e-5)
    assert rec.options["camera_source"] == "input"


def test_image_kinds_are_converted(model_dir, tmp_path, capsys):
    folder = tmp_path / "kinds"
    folder.mkdir()
    _photo(folder / "a_gray.png", mode="L")
    _photo(folder / "b_rgba.png", mode="RGBA")
    _photo(folder / "c_palette.png", mode="P")
    _photo(folder / "d_cmyk.jpg", mode="CMYK")
    arr16 = (np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) * 13)
    Image.fromarray(arr16).save(folder / "e_16bit.png")
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): stored 80x60, shown 60x80
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(folder / "f_exif.jpg", exif=exif)
    _photo(folder / "g_other_size.png", size=(100, 50))
    out = tmp_path / "out"
    code, _, err = _run(["reconstruct", folder, "-o", out, "--model", model_dir, "--export", "scene",
                         "--progress", "none", *RES], capsys)
    assert code == 0, err
    rec = Reconstruction.load(out / "scene.npz")
    assert len(rec) == 7
    sizes = dict(zip(rec.image_names, map(tuple, rec.original_sizes)))
    assert sizes["f_exif"] == (80, 60)  # upright: height 80, width 60
    assert sizes["g_other_size"] == (50, 100)
    assert sizes["e_16bit"] == (60, 80)
    # the 16-bit ramp keeps its range (PIL's own conversion would clip it to white)
    loaded = __import__("da3_plugins.core.images", fromlist=["x"]).load_image_file(folder / "e_16bit.png")
    assert loaded.pixels.min() < 10 and loaded.pixels.max() > 240


def test_video_input(model_dir, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    code, _, err = _run(["reconstruct", path, "-o", out, "--model", model_dir, "--export", "scene",
                         "--fps", "2", "--progress", "none", *RES], capsys)
    assert code == 0, err
    rec = Reconstruction.load(out / "scene.npz")
    assert len(rec) == 4  # 2 seconds at 10 fps sampled at 2 fps
    assert rec.image_names[1] == "clip_000005"


def test_overwrite_replaces(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    code, _, err = _run(["reconstruct", photos, "-o", out, "--model", model_dir, "--export", "scene",
                         "--overwrite", "--progress", "none", *RES], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["scene.npz"]


def test_export_subcommand(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["reconstruct", photos, "-o", out, "--model", model_dir, "--export", "scene",
                 "--progress", "none", *RES], capsys)[0] == 0
    again = tmp_path / "again"
    code, _, err = _run(["export", out / "scene.npz", "-o", again, "--export", "scene", "--progress", "none"], capsys)
    assert code == 0, err
    a, b = Reconstruction.load(out / "scene.npz"), Reconstruction.load(again / "scene.npz")
    np.testing.assert_array_equal(a.depth, b.depth)


def test_info(model_dir, capsys):
    code, out, _ = _run(["info", "da3-small", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    # 34,299,655 counting the shared ray-head LayerNorm under all four names; 192 fewer unique
    assert info["parameters"] == 34_299_463 and info["licence"] == "Apache-2.0"
    code, out, _ = _run(["info", model_dir], capsys)
    assert code == 0 and "da3-small" in out


def test_entry_point_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("da3p")
    res = subprocess.run([str(exe), "reconstruct", str(tmp_path / "nothing"), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("da3p: error:")
    assert "nothing" in res.stderr


# ----------------------------------------------------------------------------- bad input


def _bad(argv, capsys, out_dir: Path, expect: str):
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("da3p: error:"), err
    assert expect in lines[0], lines[0]
    _nothing_written(out_dir)
    return lines[0]


@pytest.mark.parametrize("case", ["empty_dir", "not_image", "zero_bytes", "truncated", "one_pixel", "bomb"])
def test_bad_images(model_dir, tmp_path, capsys, case):
    src = tmp_path / "in"
    src.mkdir()
    if case == "empty_dir":
        target, expect = src, "no image files"
    elif case == "not_image":
        target = src / "photo.jpg"
        target.write_text("hello")
        expect = "photo.jpg"
    elif case == "zero_bytes":
        target = src / "empty.jpg"
        target.write_bytes(b"")
        expect = "0 bytes"
    elif case == "truncated":
        full = _photo(src / "full.jpg", size=(200, 150))
        target = src / "cut.jpg"
        target.write_bytes(full.read_bytes()[:600])
        full.unlink()
        expect = "cut.jpg"
    elif case == "one_pixel":
        target = _photo(src / "dot.png", size=(1, 1))
        expect = "too small"
    else:
        target = src / "bomb.png"
        Image.new("1", (12000, 8000)).save(target)  # 96 M pixels in a few kB
        expect = "bomb.png"
    out = tmp_path / "out"
    _bad(["reconstruct", target, "-o", out, "--model", model_dir, "--export", "scene", "--progress", "none", *RES],
         capsys, out, expect)


def test_bad_output_and_model(model_dir, photos, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _bad(["reconstruct", photos, "-o", blocker / "out", "--model", model_dir, "--progress", "none", *RES], capsys,
         tmp_path / "never", "-o")
    assert blocker.read_text() == "x"
    if os.access("/proc", os.W_OK):
        _bad(["reconstruct", photos, "-o", "/proc/da3p-out", "--model", model_dir, "--progress", "none", *RES], capsys,
             tmp_path / "never", "/proc")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("keep")
    code, _, err = _run(["reconstruct", photos, "-o", existing, "--model", model_dir, *RES], capsys)
    assert code == 2 and "--overwrite" in err
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    out = tmp_path / "out"
    _bad(["reconstruct", photos, "-o", out, "--model", tmp_path / "no-model", "--progress", "none", *RES],
         capsys, out, "no-model")


def test_bad_cameras(model_dir, photos, tmp_path, capsys):
    from helpers import random_cameras

    ext, k = random_cameras(1, 2, 60, 80, seed=1)
    np.save(tmp_path / "poses2.npy", ext[0].numpy())
    np.save(tmp_path / "k.npy", k[0, 0].numpy())
    out = tmp_path / "out"
    base = ["reconstruct", photos, "-o", out, "--model", model_dir, "--progress", "none", *RES]
    _bad(base + ["--poses", tmp_path / "poses2.npy"], capsys, out, "--intrinsics")
    _bad(base + ["--poses", tmp_path / "poses2.npy", "--intrinsics", tmp_path / "k.npy"], capsys, out,
         "poses2.npy")
    _bad(base + ["--poses", tmp_path / "missing.npy", "--intrinsics", tmp_path / "k.npy"], capsys, out,
         "missing.npy")


def test_bad_scene_file(tmp_path, capsys):
    bad = tmp_path / "scene.npz"
    np.savez(bad, depth=np.zeros((1, 2, 2)))
    out = tmp_path / "out"
    _bad(["export", bad, "-o", out, "--export", "ply"], capsys, out, "scene.npz")
    newer = tmp_path / "newer.npz"
    rec = Reconstruction(images=np.zeros((1, 4, 4, 3), np.uint8), depth=np.ones((1, 4, 4)),
                         extrinsics=np.eye(4)[None, :3], intrinsics=np.eye(3)[None])
    rec.save(newer)
    with np.load(newer) as z:
        arrays = dict(z)
    arrays["schema_version"] = np.array(99)
    np.savez(newer, **arrays)
    _bad(["export", newer, "-o", out, "--export", "ply"], capsys, out, "newer")


def test_every_export_from_the_command(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run(["reconstruct", photos, "-o", out, "--model", model_dir, "--progress", "none",
                              "--export", "scene,ply,glb,colmap,nerfstudio,depth", "--conf-threshold", "0", *RES], capsys)
    assert code == 0, err
    for rel in ("scene.npz", "points.ply", "scene.glb", "colmap/sparse/0/cameras.bin", "nerfstudio/transforms.json",
                "depth/img1_depth.png"):
        assert (out / rel).is_file(), rel
    import pycolmap

    model = pycolmap.Reconstruction(str(out / "colmap/sparse/0"))
    assert sorted(im.name for im in model.images.values()) == ["img1.jpg", "img2.jpg", "img3.jpg"]
    # gs-ply without Gaussians is refused before anything is computed
    code, _, err = _run(["reconstruct", photos, "-o", tmp_path / "gs", "--model", model_dir, "--export", "gs-ply",
                         "--progress", "none", *RES], capsys)
    assert code == 2 and "--gaussians" in err


def test_only_user_input_errors_are_exit_2_and_bugs_are_one_line_exit_1(tmp_path, monkeypatch, capsys):
    import da3_plugins.commands as commands

    def broken(args, progress):
        raise KeyError("a bug of ours")

    monkeypatch.setattr(commands, "cmd_export", broken)
    assert main(["export", str(tmp_path / "s.npz"), "-o", str(tmp_path / "o"), "--progress", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("da3p: internal error: KeyError: 'a bug of ours'"), err
    log = err[0].rsplit("with ", 1)[1].rstrip(")")
    assert "Traceback" in Path(log).read_text() and "broken" in Path(log).read_text()
    Path(log).unlink()

    def plain_value_error(args, progress):  # a ValueError is not "bad input" unless it is a UserInputError
        raise ValueError("internal shape mismatch")

    monkeypatch.setattr(commands, "cmd_export", plain_value_error)
    assert main(["export", str(tmp_path / "s.npz"), "-o", str(tmp_path / "o"), "--progress", "none"]) == 1
    Path(capsys.readouterr().err.rsplit("with ", 1)[1].strip().rstrip(")")).unlink()


def test_model_and_threshold_mistakes_are_bad_input_not_bugs(tmp_path, capsys):
    import shutil
    from importlib.resources import files

    bare = tmp_path / "weights.safetensors"  # a weights file without config.json beside it
    shutil.copy(str(files("da3_plugins") / "data" / "da3-tiny" / "model.safetensors"), bare)
    demo = str(files("da3_plugins") / "data" / "demo")
    code = main(["reconstruct", demo, "-o", str(tmp_path / "o"), "--model", str(bare), "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "a bare weights file needs preset=" in err[0], err
    code = main(["reconstruct", demo, "-o", str(tmp_path / "o"), "--model", "embedded", "--process-res", "56",
                 "--export", "ply", "--conf-threshold", "1e9", "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "conf_threshold: no point passes" in err[0], err
    assert not (tmp_path / "o").exists()
