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
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from ..errors import HubError, UserInputError, first_line
from ..model_source import EMBEDDED, PICKLE_SUFFIXES, classify_model_source
from .config import HUB_REPOS, PRESETS, ModelConfig, get_preset
from .network import build_network

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CHECKPOINT_PREFIX = "model."


class CheckpointError(UserInputError):
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
    """Fetch config.json and model.safetensors of a hub repo; returns the local folder.

    Every failure is a :class:`HubError` with one line saying what to do.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise HubError(
            f"{repo_id}: loading from the Hugging Face hub needs huggingface_hub: "
            'pip install "da3-plugins[hub]", or download the repo\'s config.json and model.safetensors '
            "into a folder and pass that folder"
        ) from None
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would bury our one line
    try:
        cfg = hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)
    except Exception as exc:  # network errors, missing repo, offline mode: one line each
        raise HubError(_hub_failure(repo_id, revision, exc)) from None
    finally:
        hub_log.setLevel(level)
    return Path(cfg).parent


def _hub_failure(repo_id: str, revision: Optional[str], exc: Exception) -> str:
    """One line for a failed hub download: what went wrong and what to do.

    The hub library's error classes are recognised by name (through the class hierarchy), so
    no particular huggingface_hub version is needed.
    """
    download = (f"on a machine with access run: huggingface-cli download {repo_id} --local-dir DA3_DIR "
                f"and pass DA3_DIR as the model, or use the offline demo model {EMBEDDED!r}")
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if "GatedRepoError" in kinds:
        return (f"{repo_id}: gated on the Hugging Face hub: accept its terms on huggingface.co/{repo_id} and run "
                f"huggingface-cli login; or {download}")
    if "RepositoryNotFoundError" in kinds:
        return (f"{repo_id}: no such repo on the Hugging Face hub (or a private one: run huggingface-cli login); "
                "check the id, e.g. depth-anything/DA3-BASE, or pass a local model folder")
    if "RevisionNotFoundError" in kinds:
        return f"{repo_id}: the hub repo has no revision {revision!r}; check the branch, tag or commit"
    if "EntryNotFoundError" in kinds and "LocalEntryNotFoundError" not in kinds:
        return f"{repo_id}: the hub repo has no {CONFIG_NAME} and {WEIGHTS_NAME}: it is not a DA3 model repo"
    offline = kinds & {"LocalEntryNotFoundError", "OfflineModeIsEnabled"}
    why = "offline" if offline else f"{type(exc).__name__}: {first_line(exc)}"
    return f"{repo_id}: not in the local hub cache and the Hugging Face hub cannot be reached ({why}); {download}"


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
    """-> (weights path, preset name, description of the source).

    What the name is (embedded, folder, file, hub id) is decided by
    :func:`~da3_plugins.core.model_source.classify_model_source`; this finds the weights and
    the preset (from ``preset``, ``config.json`` or the known hub repos).
    """
    found = classify_model_source(source)
    if found.kind == "embedded":
        folder = embedded_model_dir()
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{folder}: the embedded model is missing from this installation (reinstall da3-plugins)")
        return folder / WEIGHTS_NAME, preset or preset_from_config(read_config(folder / CONFIG_NAME), folder), EMBEDDED
    if preset is not None and validate:
        get_preset(preset)  # validates the name
    if found.kind == "folder":
        path = Path(found.location)
        weights = path / WEIGHTS_NAME
        if preset is None:
            preset = preset_from_config(read_config(path / CONFIG_NAME), path / CONFIG_NAME)
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: missing (a model folder needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        return weights, preset, str(path)
    if found.kind == "file":
        path = Path(found.location)
        if found.is_pickle:
            read_safetensors(path)  # raises the pickle refusal
        if preset is None:
            beside = path.parent / CONFIG_NAME
            if beside.is_file():
                preset = preset_from_config(read_config(beside), beside)
            else:
                raise CheckpointError(
                    f"{path}: a bare weights file needs preset= (one of {', '.join(sorted(PRESETS))})"
                )
        return path, preset, str(path)
    repo = found.location
    if preset is None and repo in HUB_REPOS:
        preset = HUB_REPOS[repo]
    folder = _hub_download(repo, revision)
    if preset is None:
        preset = preset_from_config(read_config(folder / CONFIG_NAME), f"{repo}/{CONFIG_NAME}")
    return folder / WEIGHTS_NAME, preset, repo
