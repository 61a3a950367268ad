"""``da3p reconstruct`` on many large photos, as a user runs it: peak memory does not grow with
the number of photos, a bad file among many stops the run before any network time, and
``--skip-unreadable`` goes on without it (issue 15)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import Reconstruction

PHONE = (4032, 3024)


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory):
    """One 4032x3024 JPEG with photo-like content (smooth gradients plus noise)."""
    rng = np.random.default_rng(0)
    w, h = PHONE
    small = rng.integers(0, 255, (h // 48, w // 48, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
    big = np.clip(big + rng.integers(-12, 12, big.shape), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("phone") / "phone.jpg"
    Image.fromarray(big).save(path, quality=90)
    return path


def _folder(root: Path, photo: Path, n: int) -> Path:
    folder = root / f"photos_{n}"
    folder.mkdir()
    for i in range(n):
        os.link(photo, folder / f"IMG_{i:04d}.jpg")  # n files, n full decodes
    return folder


def _da3p(args, timeout=900):
    """(exit code, seconds, peak RSS bytes, stderr) of one ``da3p`` run in a subprocess."""
    start = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "da3_plugins.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return os.waitstatus_to_exitcode(status), time.time() - start, usage.ru_maxrss * 1024, err


def test_peak_memory_does_not_grow_with_the_photo_count(phone_photo, tmp_path):
    peaks = {}
    for n in (24, 96):
        out = tmp_path / f"out_{n}"
        code, seconds, rss, err = _da3p(["reconstruct", _folder(tmp_path, phone_photo, n), "-o", out,
                                         "--model", "embedded", "--process-res", "112", "--export", "scene",
                                         "--progress", "none"])
        assert code == 0, err
        assert len(Reconstruction.load(out / "scene.npz")) == n
        peaks[n] = rss
    # four times the photos: the full-resolution ones are released one by one (each is 36 MB
    # decoded; keeping them would add 2.6 GB)
    assert peaks[96] - peaks[24] < 200e6, {k: f"{v / 1e6:.0f} MB" for k, v in peaks.items()}


def test_a_corrupt_photo_among_many_stops_before_the_network(phone_photo, tmp_path):
    folder = _folder(tmp_path, phone_photo, 40)
    (folder / "IMG_0017.jpg").unlink()
    (folder / "IMG_0017.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    out = tmp_path / "out"
    code, seconds, _, err = _da3p(["reconstruct", folder, "-o", out, "--model", "embedded", "--process-res", "112",
                                   "--export", "scene", "--progress", "none"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "IMG_0017.jpg" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
    assert seconds < 20, "the header check runs before any photo is decoded"

    code, _, _, err = _da3p(["reconstruct", folder, "-o", out, "--model", "embedded", "--process-res", "112",
                             "--export", "scene", "--progress", "none", "--skip-unreadable"])
    assert code == 0, err
    assert "IMG_0017.jpg" in err
    rec = Reconstruction.load(out / "scene.npz")
    assert len(rec) == 39 and "IMG_0017" not in rec.image_names
    assert [s.split(":")[0] for s in rec.options.skipped_files] == ["IMG_0017.jpg"]


def test_a_result_larger_than_the_memory_limit_is_written_as_a_scene_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / f"p{i:02d}.png")
    out = tmp_path / "out"
    env = {**os.environ, "DA3P_IN_MEMORY_LIMIT": "1000"}
    proc = subprocess.run([sys.executable, "-m", "da3_plugins.cli", "reconstruct", str(folder), "-o", str(out),
                           "--model", "embedded", "--process-res", "56", "--export", "scene,ply",
                           "--max-views", "6", "--chunk-overlap", "2", "--progress", "none"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "scene" / "scene.json").is_file() and not (out / "scene.npz").exists()
    rec = Reconstruction.load(out / "scene")
    assert isinstance(rec.depth, np.memmap) and len(rec) == 12 and rec.options.passes >= 3
    from plyfile import PlyData

    assert len(PlyData.read(str(out / "points.ply"))["vertex"]) > 0
