"""``DA3Model``: a loaded network plus what it is, and ``load_model``."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .config import CHECKPOINT_LICENSES, ModelConfig, NestedConfig, NetConfig, get_preset
from .loading import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    build_empty,
    checkpoint_state_dict,
    load_network_state,
    materialize,
    read_safetensors,
    resolve_device,
    resolve_dtype,
    resolve_source,
    to_network_keys,
)


@dataclass
class DA3Model:
    """A DA3 network ready to run.

    Attributes:
        net: the ``torch.nn.Module`` (``DA3Net`` or ``NestedDA3Net``), in eval mode.
        preset: preset name, e.g. ``"da3-base"``.
        config: the typed architecture config.
        source: where the weights came from.
    """

    net: nn.Module
    preset: str
    config: ModelConfig
    source: str = ""

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Backbone compute dtype (heads always run in float32)."""
        return self.net.backbone_dtype or torch.float32

    @property
    def predicts_cameras(self) -> bool:
        return self.net.predicts_cameras

    @property
    def has_gaussians(self) -> bool:
        return self.net.has_gaussians

    @property
    def is_metric(self) -> bool:
        return self.config.is_nested

    @property
    def license(self) -> str:
        """Licence of the official weights of this preset."""
        return CHECKPOINT_LICENSES.get(self.preset, "unknown")

    def save_pretrained(self, folder: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in the published layout."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.to("cpu", torch.float32) for k, v in checkpoint_state_dict(self.net).items()}
        for name, payload in ((WEIGHTS_NAME, None), (CONFIG_NAME, json.dumps({"model_name": self.preset}, indent=2))):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            try:
                if payload is None:
                    save_file(tensors, tmp, metadata={"format": "pt"})
                else:
                    Path(tmp).write_text(payload + "\n")
                os.replace(tmp, folder / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return folder


def load_model(
    source: Union[str, os.PathLike],
    *,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = None,
    preset: Union[str, ModelConfig, None] = None,
    revision: Optional[str] = None,
) -> DA3Model:
    """Load a DA3 model.

    Args:
        source: a folder laid out like a hub repo (``config.json`` + ``model.safetensors``),
            a ``.safetensors`` file (with ``preset=``, or a ``config.json`` beside it), or a
            hub repo id such as ``"depth-anything/DA3-BASE"`` (downloaded with
            huggingface_hub, the ``hub`` extra).
        device: ``None``/``"auto"`` picks CUDA, then MPS, then CPU.
        dtype: compute dtype of the ViT backbone (autocast): ``None``/float32 is exact;
            ``"bf16"`` follows the official GPU precision policy and is much faster on
            hardware with native bfloat16.  The weights and all heads stay float32.
        preset: architecture name (see ``PRESETS``), overriding ``config.json``; or a
            config object for a custom architecture (e.g. from ``shrink_backbone``).
        revision: hub revision (branch, tag or commit) for repo ids.
    """
    config = preset if isinstance(preset, (NetConfig, NestedConfig)) else None
    weights, preset, description = resolve_source(source, config.name if config else preset, revision,
                                                  validate=config is None)
    config = config or get_preset(preset)
    tensors = to_network_keys(read_safetensors(weights), str(weights))
    net = build_empty(config)
    load_network_state(net, tensors, str(weights))
    net = materialize(net, resolve_device(device)).eval()
    net.backbone_dtype = resolve_dtype(dtype)
    return DA3Model(net=net, preset=preset, config=config, source=description)


def random_model(preset: Union[str, ModelConfig], *, seed: int = 0, device=None) -> DA3Model:
    """A model with random weights (for tests and benchmarks); ``preset`` may be a config."""
    from .network import build_network

    config = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    net = build_network(config).to(resolve_device(device)).eval()
    return DA3Model(net=net, preset=config.name, config=config, source="random")
