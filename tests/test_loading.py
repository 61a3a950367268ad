"""Checkpoint keys, strict loading, sources and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from da3_plugins.core import HUB_REPOS, PRESETS, load_model, random_model
from da3_plugins.core.errors import HubError
from da3_plugins.core.model.config import PROJECT_PRESETS
from da3_plugins.core.model.loading import CheckpointError, build_empty, checkpoint_state_dict
from helpers import random_cameras, random_images

# Tensor counts and parameter counts derived from the official code (spec section 1).
EXPECTED = {
    "da3-small": (443, 34_299_655),
    "da3-base": (443, 135_366_791),
    "da3-large": (643, 410_941_959),
    "da3-giant": (977, 1_355_674_317),
    "da3metric-large": (406, 334_171_394),
    "da3mono-large": (406, 334_171_394),
    "da3nested-giant-large": (1383, 1_689_845_711),
}


def _official_meta(preset: str):
    """The official network on the meta device (no memory): keys and shapes only."""
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    real_linspace = torch.linspace
    # the official ViT calls .item() on a linspace during construction
    torch.linspace = lambda *a, **k: real_linspace(*a, **{**k, "device": "cpu"})
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return create_object(load_config(MODEL_REGISTRY[preset]))
    finally:
        torch.linspace = real_linspace


@pytest.mark.parametrize("preset", sorted(EXPECTED))
@pytest.mark.oracle
def test_state_dict_keys_equal_official(preset):
    ours = {k: tuple(v.shape) for k, v in build_empty(PRESETS[preset]).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in _official_meta(preset).state_dict().items()}
    assert ours == theirs
    count, params = EXPECTED[preset]
    assert len(ours) == count
    assert sum(torch.Size(s).numel() for s in ours.values()) == params


def test_hub_repo_ids_map_to_presets():
    assert HUB_REPOS["depth-anything/DA3-LARGE-1.1"] == "da3-large"
    assert HUB_REPOS["depth-anything/DA3-GIANT-1.1"] == "da3-giant"
    assert HUB_REPOS["depth-anything/DA3NESTED-GIANT-LARGE-1.1"] == "da3nested-giant-large"
    assert set(HUB_REPOS.values()) == set(PRESETS) - set(PROJECT_PRESETS)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    model = random_model("da3-small", seed=3)
    folder = model.save_pretrained(tmp_path_factory.mktemp("small"))
    return folder, model


def test_save_and_load_roundtrip(small_folder):
    folder, model = small_folder
    assert json.loads((folder / "config.json").read_text()) == {"model_name": "da3-small"}
    stored = load_file(str(folder / "model.safetensors"))
    assert len(stored) == 437 and all(k.startswith("model.") for k in stored)  # shared LN stored once
    loaded = load_model(folder, device="cpu")
    assert loaded.preset == "da3-small" and loaded.license == "Apache-2.0"
    x = random_images(1, 2, 28, 42)
    torch.testing.assert_close(loaded.net(x).depth, model.net(x).depth, rtol=1e-6, atol=1e-6)


def test_all_keys_layout_and_bare_file(small_folder, tmp_path):
    """Every name stored (a plain state_dict) and a bare .safetensors with preset=."""
    folder, model = small_folder
    full = {"model." + k: v.clone() for k, v in model.net.state_dict().items()}
    assert len(full) == 443
    save_file(full, str(tmp_path / "weights.safetensors"))
    loaded = load_model(tmp_path / "weights.safetensors", preset="da3-small", device="cpu")
    x = random_images(1, 1, 28, 28)
    torch.testing.assert_close(loaded.net(x).depth, model.net(x).depth, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs preset="):
        load_model(tmp_path / "weights.safetensors")


def _write(tmp_path, tensors, preset="da3-small"):
    tmp_path.mkdir()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_name": preset}))
    return tmp_path


def test_missing_unexpected_and_misshaped_tensors_are_named(small_folder, tmp_path):
    folder, _ = small_folder
    tensors = load_file(str(folder / "model.safetensors"))
    missing = dict(tensors)
    del missing["model.head.projects.2.weight"]
    with pytest.raises(CheckpointError, match=r"1 missing: model\.head\.projects\.2\.weight"):
        load_model(_write(tmp_path / "a", missing))
    extra = dict(tensors, **{"model.head.bogus": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"1 unexpected: model\.head\.bogus"):
        load_model(_write(tmp_path / "b", extra))
    bad = dict(tensors, **{"model.cam_dec.fc_t.weight": torch.zeros(4, 768)})
    with pytest.raises(CheckpointError, match=r"wrong shape: model\.cam_dec\.fc_t\.weight \(file \(4, 768\), model \(3, 768\)\)"):
        load_model(_write(tmp_path / "c", bad))
    # the shared LayerNorm stored under none of its names is a real omission
    no_ln = {k: v for k, v in tensors.items() if "output_conv2_aux.0.2" not in k}
    with pytest.raises(CheckpointError, match="missing: model.head.scratch.output_conv2_aux"):
        load_model(_write(tmp_path / "d", no_ln))


def test_corrupt_and_truncated_files(small_folder, tmp_path):
    folder, _ = small_folder
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable safetensors file"):
        load_model(tmp_path)


def test_bad_config_and_missing_files(small_folder, tmp_path):
    folder, _ = small_folder
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "da3-huge"}))
    with pytest.raises(CheckpointError, match="unknown model_name 'da3-huge'; known presets: da3-base"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="unknown DA3 preset 'da3-nano'"):
        load_model(tmp_path, preset="da3-nano")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_name": "da3-small"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors: missing"):
        load_model(empty)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_model(tmp_path / "nowhere" / "x.safetensors")


def test_pickles_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not even a pickle")
    with pytest.raises(CheckpointError, match="pickled checkpoints are not loaded"):
        load_model(path, preset="da3-small")


def test_hub_id_offline_gives_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="huggingface-cli download depth-anything/DA3-SMALL --local-dir") as info:
        load_model("depth-anything/DA3-SMALL")
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------- bad network input


@pytest.fixture(scope="module")
def small_model():
    return random_model("da3-small")


@pytest.mark.parametrize(
    "shape,match",
    [
        ((1, 2, 3, 30, 42), r"multiples of 14, got H=30, W=42"),
        ((1, 2, 4, 28, 42), r"expected 3 colour channels"),
        ((2, 3, 28, 42), r"expected a tensor of shape \(B, N, 3, H, W\)"),
    ],
)
def test_bad_image_shapes(small_model, shape, match):
    with pytest.raises(ValueError, match=match):
        small_model.net(torch.zeros(shape))


def test_bad_camera_inputs(small_model):
    x = random_images(1, 2, 28, 42)
    ext, k = random_cameras(1, 2, 28, 42)
    with pytest.raises(ValueError, match="extrinsics were given without intrinsics"):
        small_model.net(x, ext)
    with pytest.raises(ValueError, match=r"extrinsics: expected \(B, N, 4, 4\)"):
        small_model.net(x, ext[:, :1], k)
    with pytest.raises(ValueError, match=r"intrinsics: expected \(B, N, 3, 3\)"):
        small_model.net(x, ext, k[..., :2, :])
    with pytest.raises(ValueError, match="ref_view_strategy"):
        small_model.net(x, ref_view_strategy="best")
    with pytest.raises(ValueError, match="has no Gaussian head"):
        small_model.net(x, infer_gs=True)


def test_pose_conditioning_needs_a_camera_encoder():
    from da3_plugins.core.model.config import shrink_backbone
    from da3_plugins.core import NetConfig
    from da3_plugins.core.model.network import DA3Net

    cfg = shrink_backbone(PRESETS["da3mono-large"], 1, [0, 0, 0, 0])
    assert isinstance(cfg, NetConfig)
    net = DA3Net(cfg).eval()
    x = random_images(1, 2, 28, 28)
    ext, k = random_cameras(1, 2, 28, 28)
    with pytest.raises(ValueError, match="da3mono-large has no camera encoder"):
        net(x, ext, k)
    with pytest.raises(ValueError, match="has no ray head"):
        net(x, use_ray_pose=True)


def test_import_pulls_in_no_host_tools():
    code = (
        "import sys, da3_plugins.core, da3_plugins.core.model.network, da3_plugins.core.model.loading;"
        "bad = [m for m in ('bpy', 'open3d', 'nerfstudio', 'e3nn', 'evo', 'depth_anything_3', 'cv2') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    # the package itself does not even import torch until a model is asked for
    res = subprocess.run([sys.executable, "-c", "import sys, da3_plugins; sys.exit('torch' in sys.modules)"])
    assert res.returncode == 0
