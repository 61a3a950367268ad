"""The official depth-anything-3 package as a test oracle.

Builds official networks through its own YAML config mechanism with random weights,
optionally with fewer transformer blocks (the official ViT builders take ``depth``), and
writes their weights as a hub-style folder that ``load_model`` reads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from pathlib import Path
from typing import Optional

import os

import torch

# the official package prints an INFO line on every forward unless told otherwise
os.environ.setdefault("DA3_LOG_LEVEL", "ERROR")


@contextlib.contextmanager
def _vit_depths(depths: dict):
    """Patch the official ViT builders so that e.g. {'vitg': 6} builds a 6-block giant."""
    from depth_anything_3.model.dinov2 import dinov2 as mod

    names = {"vits": "vit_small", "vitb": "vit_base", "vitl": "vit_large", "vitg": "vit_giant2"}
    saved = {}
    try:
        for vit, depth in depths.items():
            fn = names[vit]
            saved[fn] = getattr(mod, fn)
            setattr(mod, fn, functools.partial(saved[fn], depth=depth))
        yield
    finally:
        for fn, orig in saved.items():
            setattr(mod, fn, orig)


def _set_backbone(net_cfg, shrink: Optional[dict]) -> None:
    if not shrink:
        return
    net_cfg.out_layers = list(shrink["out_layers"])
    if net_cfg.alt_start != -1 and "alt_start" in shrink:
        net_cfg.alt_start = net_cfg.qknorm_start = net_cfg.rope_start = shrink["alt_start"]


def official_network(preset: str, shrink: Optional[dict] = None, metric_shrink: Optional[dict] = None, seed: int = 0):
    """The official network of a preset with random weights.

    shrink: {"depth": n, "out_layers": [...], "alt_start": k} for the (any-view) backbone;
    metric_shrink: the same for the nested model's metric branch.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_3.cfg import create_object, load_config
        from depth_anything_3.registry import MODEL_REGISTRY

    cfg = load_config(MODEL_REGISTRY[preset])
    depths = {}
    if preset.startswith("da3nested"):
        parts = [(cfg.anyview.net, shrink), (cfg.metric.net, metric_shrink)]
    else:
        parts = [(cfg.net, shrink)]
    for net_cfg, sh in parts:
        _set_backbone(net_cfg, sh)
        if sh:
            depths[net_cfg.name] = sh["depth"]
    torch.manual_seed(seed)
    with _vit_depths(depths), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = create_object(cfg)
    perturb(net, seed)
    for mono in (net, getattr(net, "da3_metric", None)):
        sky = getattr(getattr(getattr(mono, "head", None), "scratch", None), "sky_output_conv2", None)
        if sky is not None:
            # random weights put every pixel below the sky threshold; spread the sky logits
            # around it so that sky and non-sky pixels both occur and the sky fill runs
            with torch.no_grad():
                sky[2].weight.mul_(30.0)
                sky[2].bias.fill_(0.3)
    return net.eval()


@torch.no_grad()
def perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Move unit/zero-initialised parameters (norms, LayerScale, biases) off their defaults
    so that mistakes in how they are applied show up in comparisons."""
    g = torch.Generator().manual_seed(seed + 1)
    seen = set()
    for name, p in net.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
            p.copy_(1.0 + 0.1 * noise)
        elif name.endswith("bias"):
            p.add_(0.02 * noise)


def save_hub_folder(net: torch.nn.Module, folder: Path, preset: str, dedupe_shared: bool = False) -> Path:
    """Write the official network as config.json + model.safetensors (keys 'model.'-prefixed).

    dedupe_shared=True stores tensors shared between names once (as safetensors'
    save_model, which the hub uses, does); otherwise every name gets its own copy.
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors, seen = {}, {}
    for name, t in net.state_dict(keep_vars=True).items():
        if dedupe_shared and id(t) in seen:
            continue
        seen[id(t)] = name
        tensors["model." + name] = t.detach().clone().contiguous()
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_name": preset}))
    return folder


def run_official(net, images, **kwargs):
    """Forward in float32 without autocast, as the parity tests compare."""
    with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
        return net(images, **kwargs)


def official_api(net, fp32: bool = False):
    """The official ``DepthAnything3`` API object around ``net`` (its input and output processors).

    fp32=False keeps its ``forward`` as shipped (bf16 autocast where CUDA supports it, else
    fp16, emulated on a CPU); fp32=True runs the network in float32 without autocast."""
    import sys
    import types

    # its export package imports moviepy and gsplat video tools; nothing here exports through it
    stub = types.ModuleType("depth_anything_3.utils.export")
    stub.export = None
    sys.modules.setdefault("depth_anything_3.utils.export", stub)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from depth_anything_3.api import DepthAnything3
        from depth_anything_3.utils.io.input_processor import InputProcessor
        from depth_anything_3.utils.io.output_processor import OutputProcessor

    api = DepthAnything3.__new__(DepthAnything3)
    torch.nn.Module.__init__(api)
    api.model, api.input_processor, api.output_processor, api.device = net, InputProcessor(), OutputProcessor(), None
    if fp32:
        def forward_fp32(image, extrinsics=None, intrinsics=None, export_feat_layers=None, infer_gs=False,
                         use_ray_pose=False, ref_view_strategy="saddle_balanced"):
            with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=False):
                return net(image, extrinsics, intrinsics, export_feat_layers, infer_gs, use_ray_pose,
                           ref_view_strategy)

        api.forward = forward_fp32
    return api
