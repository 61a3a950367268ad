"""Loading DA3 checkpoints: local hub-style folders, single safetensors files, hub repo ids.

Only safetensors are ever read (no unpickling).  The published files prefix every key
with ``model.`` (the official API wrapper's attribute name); this module is the one
place that maps between those keys and ``model.net.state_dict()`` keys.  Loading is
strict: a missing, unexpected or mis-shaped tensor is an error that names it.  Tensors
that the network shares between several names (one LayerNorm of the ray head) may be
stored once, as ``safetensors.torch.save_model`` writes them.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from .config import HUB_REPOS, PRESETS, ModelConfig, get_preset
from .network import build_network

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_PREFIX = "model."
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be used (bad content, wrong keys, bad config)."""


# ----------------------------------------------------------------------------- device / dtype


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """None or "auto" -> CUDA if available, else Apple MPS, else CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """Backbone compute dtype: None -> float32 (exact); also accepts "bf16"/"fp16" names."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype: expected float32, bfloat16 or float16, got {dtype}")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}") from None


# ----------------------------------------------------------------------------- files


def read_safetensors(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """Read every tensor of a safetensors file to CPU, with a clear error for bad files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickled checkpoints are not loaded (they can run arbitrary code); "
            "convert it to .safetensors or use the published model.safetensors"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({exc}); the file may be truncated or corrupt, download it again"
        ) from None


def read_config(path: Union[str, Path]) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object with a 'model_name' key")
    return data


def preset_from_config(config: dict, path: Union[str, Path]) -> str:
    name = config.get("model_name")
    if name is None:
        raise CheckpointError(f"{path}: no 'model_name' key; pass preset= (one of {', '.join(sorted(PRESETS))})")
    if name not in PRESETS:
        raise CheckpointError(f"{path}: unknown model_name {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return name


def _hub_download(repo_id: str, revision: Optional[str] = None) -> Path:
    """Fetch config.json and model.safetensors of a hub repo; returns the local folder."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ImportError(
            f"loading {repo_id!r} from the Hugging Face hub needs huggingface_hub: "
            'pip install "da3-plugins[hub]", or download the repo\'s config.json and model.safetensors '
            "into a folder and pass that folder"
        ) from None
    try:
        cfg = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    except Exception as exc:  # network errors, missing repo, offline mode: all need the same advice
        raise RuntimeError(
            f"could not get {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            f"On a machine with access run: huggingface-cli download {repo_id} --local-dir DA3_DIR "
            "and pass DA3_DIR to load_model"
        ) from None
    return Path(cfg).parent


EMBEDDED = "embedded"


def embedded_model_dir() -> Path:
    """Folder of the model shipped inside the package (``da3_plugins/data/da3-tiny``)."""
    from importlib.resources import files

    return Path(str(files("da3_plugins") / "data" / "da3-tiny"))


# ----------------------------------------------------------------------------- state dicts


def _shared_groups(net: nn.Module):
    """Lists of state-dict names that refer to one tensor object (tied parameters)."""
    by_id = defaultdict(list)
    for name, tensor in net.state_dict(keep_vars=True).items():
        by_id[id(tensor)].append(name)
    return [names for names in by_id.values() if len(names) > 1]


def to_network_keys(tensors: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """Strip the checkpoint prefix ``model.`` (all keys must have it, or none)."""
    prefixed = [k.startswith(CHECKPOINT_PREFIX) for k in tensors]
    if all(prefixed):
        return {k[len(CHECKPOINT_PREFIX):]: v for k, v in tensors.items()}
    if not any(prefixed):
        return dict(tensors)
    odd = next(k for k, p in zip(tensors, prefixed) if not p)
    raise CheckpointError(f"{source}: mixes keys with and without the {CHECKPOINT_PREFIX!r} prefix (e.g. {odd!r})")


def load_network_state(net: nn.Module, tensors: Dict[str, torch.Tensor], source: str) -> None:
    """Strictly load checkpoint tensors (already without prefix) into ``net``.

    ``net`` may live on the meta device: tensors are then assigned, not copied.
    """
    expected = net.state_dict(keep_vars=True)
    tensors = dict(tensors)
    for group in _shared_groups(net):
        present = [n for n in group if n in tensors]
        if present:
            for n in group:
                tensors.setdefault(n, tensors[present[0]])
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    bad_shape = [
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape)):
        if names:
            shown = ", ".join(CHECKPOINT_PREFIX + n for n in names[:5])
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            problems.append(f"{len(names)} {label}: {shown}{more}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the architecture; " + "; ".join(problems))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()},
                        strict=True, assign=True)


def checkpoint_state_dict(net: nn.Module) -> Dict[str, torch.Tensor]:
    """``net`` weights under the published key names, each shared tensor stored once."""
    state = net.state_dict()
    drop = {n for group in _shared_groups(net) for n in group[1:]}
    return {CHECKPOINT_PREFIX + k: v.detach().contiguous() for k, v in state.items() if k not in drop}


def build_empty(config: ModelConfig) -> nn.Module:
    """The network with parameters on the meta device (no memory, no random init)."""
    with torch.device("meta"):
        net = build_network(config)
    return net


def materialize(net: nn.Module, device: torch.device) -> nn.Module:
    """Move a loaded network to ``device`` and rebuild non-persistent buffers left on meta."""
    for module in net.modules():
        rebuild = getattr(module, "reset_buffers", None)
        if rebuild is not None:
            rebuild()
    leftover = [n for n, t in list(net.named_parameters()) + list(net.named_buffers()) if t.is_meta]
    if leftover:  # pragma: no cover - a module forgot reset_buffers
        raise RuntimeError(f"tensors left uninitialised after loading: {leftover[:5]}")
    return net.to(device)


def resolve_source(source: Union[str, os.PathLike], preset: Optional[str], revision: Optional[str] = None,
                   validate: bool = True):
    """-> (weights path, preset name, description of the source)."""
    text = os.fspath(source)
    if text == EMBEDDED:
        folder = embedded_model_dir()
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{folder}: the embedded model is missing from this installation (reinstall da3-plugins)")
        return folder / WEIGHTS_NAME, preset or preset_from_config(read_config(folder / CONFIG_NAME), folder), "embedded"
    path = Path(text).expanduser()
    if preset is not None and validate:
        get_preset(preset)  # validates the name
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if preset is None:
            preset = preset_from_config(read_config(path / CONFIG_NAME), path / CONFIG_NAME)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing (a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        return weights, preset, str(path)
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            read_safetensors(path)  # raises the pickle refusal
        if preset is None:
            beside = path.parent / CONFIG_NAME
            if beside.is_file():
                preset = preset_from_config(read_config(beside), beside)
            else:
                raise ValueError(
                    f"{path}: a bare weights file needs preset= (one of {', '.join(sorted(PRESETS))})"
                )
        return path, preset, str(path)
    looks_like_repo = (
        text.count("/") == 1
        and not text.startswith((".", "/", "~"))
        and not text.lower().endswith((".safetensors", ".json") + PICKLE_SUFFIXES)
    )
    if looks_like_repo:
        if preset is None and text in HUB_REPOS:
            preset = HUB_REPOS[text]
        folder = _hub_download(text, revision)
        if preset is None:
            preset = preset_from_config(read_config(folder / CONFIG_NAME), f"{text}/{CONFIG_NAME}")
        return folder / WEIGHTS_NAME, preset, text
    raise FileNotFoundError(
        f"{text}: no such file or folder, and not a hub repo id like 'depth-anything/DA3-BASE'"
    )
