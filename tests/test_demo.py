"""`da3p demo` (what `make demo` runs): the bundled example reconstructed offline with the
embedded model, every output read back by an independent reader."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from da3_plugins.cli import main
from da3_plugins.core.reconstruction import Reconstruction


@pytest.mark.slow  # the whole demo with the embedded model (make demo checks it too)
def test_demo_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    start = time.time()
    assert main(["demo", "-o", str(out), "--progress", "none"]) == 0
    seconds = time.time() - start
    text = capsys.readouterr().out
    print(f"da3p demo took {seconds:.1f} s")
    assert str(out) in text and "preview.png" in text and "open with" in text
    # issue 19: the fused points measured against the true surface of the regenerated scene
    assert re.search(r"fused points against the true surface: median distance \d+\.\d% of the scene's extent", text)
    rec = Reconstruction.load(out / "scene.npz")
    assert len(rec) == 6 and rec.model == "embedded"

    from plyfile import PlyData

    ply = PlyData.read(str(out / "points.ply"))
    assert ply["vertex"].count > 1000

    import trimesh

    glb = trimesh.load(str(out / "scene.glb"))
    assert sum(len(g.vertices) for g in glb.geometry.values()) > 1000

    import pycolmap

    model = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    assert model.num_images() == 6 and model.num_points3D() > 100

    from PIL import Image

    depth_pngs = sorted((out / "depth").glob("*.png"))
    assert len(depth_pngs) >= 6
    preview = np.asarray(Image.open(out / "preview.png"))
    assert preview.ndim == 3 and preview.shape[1] == 4 * rec.width
    assert preview.std() > 10  # a picture, not a blank
    # the output folder is not replaced without --overwrite
    assert main(["demo", "-o", str(out), "--progress", "none"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_reconstruct_without_model_offline_points_to_the_embedded_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    from importlib.resources import files

    demo = str(files("da3_plugins") / "data" / "demo")
    code = main(["reconstruct", demo, "-o", str(tmp_path / "out"), "--progress", "none"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model embedded" in err[0] and "huggingface-cli download" in err[0]
    assert not (tmp_path / "out").exists()
