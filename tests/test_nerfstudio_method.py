"""``ns-train da3-splat`` on CPU from a synthetic scene, and ``ns-export gaussian-splat``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.host
pytest.importorskip("nerfstudio")

from da3_plugins.core.export import read_gaussian_ply  # noqa: E402
from da3_plugins.core.synthetic import make_scene  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("start", ["points", "da3-gaussians"])
def test_train_on_cpu_and_export(tmp_path, start):
    plyfile = pytest.importorskip("plyfile")
    scene = make_scene(num_views=6, height=84, width=112, seed=2)
    rec = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32))
    if start == "da3-gaussians":
        from da3_plugins.core.reconstruction import GaussianSet

        g = 3000
        rec.gaussians = GaussianSet(means=scene.sample_surface(g), scales=np.full((g, 3), 0.03),
                                    rotations=np.tile([1.0, 0, 0, 0], (g, 1)), harmonics=np.zeros((g, 3, 9)),
                                    opacities=np.full(g, 0.8))
    data = rec.save(tmp_path / "scene.npz")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"))  # no cached LPIPS weights
    train = subprocess.run(
        [str(BIN / "ns-train"), "da3-splat", "--data", str(data), "--max-num-iterations", "20",
         "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "Downloading" not in train.stdout + train.stderr
    config = next((tmp_path / "out").rglob("config.yml"))
    export = subprocess.run(
        [str(BIN / "ns-export"), "gaussian-splat", "--load-config", str(config), "--output-dir", str(tmp_path / "ply")],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    ply = tmp_path / "ply" / "splat.ply"
    v = plyfile.PlyData.read(str(ply))["vertex"]
    ours = read_gaussian_ply(ply)
    assert v.count == len(ours) > 1000
    if start == "da3-gaussians":
        assert len(ours) == 3000 and "starting from DA3's 3,000 Gaussians" in train.stdout
    # trained 20 steps from DA3's points: mapped back through the dataparser's transform (saved
    # beside the config), the Gaussians still sit on the true surface
    import json

    tf = json.loads((config.parent / "dataparser_transforms.json").read_text())
    t = np.vstack([np.array(tf["transform"]), [0, 0, 0, 1]])
    means = np.concatenate([ours.means / tf["scale"], np.ones((len(ours), 1))], 1) @ np.linalg.inv(t).T
    d = scene.distance_to_surface(means[:, :3])
    assert np.median(d) < 0.01 * scene.extent


def test_method_registered():
    res = subprocess.run([str(BIN / "ns-train"), "--help"], capture_output=True, text=True, timeout=300)
    assert "da3-splat" in res.stdout + res.stderr


def test_nerfacto_trains_on_da3_data_on_cpu(tmp_path):
    """Any method can take da3-data in place of COLMAP output: nerfstudio's own nerfacto trains
    on a DA3 scene file on CPU.  nerfacto always builds LPIPS, whose AlexNet weights torchvision
    would download; the test puts random AlexNet weights in a private torch hub cache instead
    (they only affect the LPIPS metric), so nothing is downloaded."""
    import torch
    import torchvision

    scene = make_scene(num_views=5, height=84, width=112, seed=3)
    data = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32)).save(tmp_path / "scene.npz")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), hub / "alexnet-owt-7be5be79.pth")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch"))
    train = subprocess.run(
        [str(BIN / "ns-train"), "nerfacto", "--max-num-iterations", "3", "--steps-per-save", "2",
         "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", str(tmp_path / "out"),
         "da3-data", "--data", str(data)],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert "Downloading" not in train.stdout + train.stderr
    config = next((tmp_path / "out").rglob("config.yml"))
    assert "nerfacto" in config.read_text() and "DA3DataParserConfig" in config.read_text()
    assert list((config.parent / "nerfstudio_models").glob("step-*.ckpt"))
