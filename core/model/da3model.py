"""``DA3Model``: a loaded network plus what it is, and ``load_model``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..precision import model_precision, set_precision
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
        """Backbone compute dtype (heads always run in float32); ``torch.qint8`` for int8."""
        return self.net.backbone_dtype or torch.float32

    @property
    def precision(self) -> str:
        """The backbone's precision as an option name: "fp32", "bf16", "fp16" or "int8"."""
        return model_precision(self.net)

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

    def reconstruct(self, images, options=None, *, extrinsics=None, intrinsics=None, fps: Optional[float] = 2.0,
                    progress=None, cache_dir=None, pool=None, **option_values):
        """Photos in, a :class:`~da3_plugins.core.reconstruction.Reconstruction` out.

        Args:
            images: file paths, folders, videos (sampled at ``fps``), PIL images or uint8
                arrays (RGB), alone or in a list; any number of views.
            options: a :class:`~da3_plugins.core.options.ReconstructOptions` (default: its
                defaults).  Its fields may also be given as keywords, which override it:
                ``process_res`` and ``process_res_method`` (network input size, as the
                official ``upper_bound_resize`` / ``upper_bound_crop`` / ``lower_bound_*``),
                ``ref_view_strategy`` ("first", "middle", "saddle_balanced",
                "saddle_sim_range"), ``use_ray_pose`` (cameras from the ray map instead of the
                camera decoder), ``infer_gs`` (also predict 3-D Gaussians: giant and nested
                models), ``align_to_input_ext_scale`` (with known poses, return their scale),
                ``max_views_per_pass`` (default: from free memory; more views run in
                overlapping chunks joined by robust Sim(3) fits and a global pose graph),
                ``chunk_overlap`` (default max(2, min(16, size/4))), ``loop_closure`` ("auto" or
                "off"), ``skip_unreadable`` (leave out unreadable files), ``seed`` (seeds the random parts without touching the
                global RNG; None leaves it alone) and ``precision`` (backbone precision for
                this run: "auto", "fp32", "bf16", "fp16", "int8"; default: as loaded).
            extrinsics: known OpenCV world-to-camera poses (N, 4, 4) or (N, 3, 4); need
                ``intrinsics`` (N, 3, 3) in pixels of the original photos.  The network is
                conditioned on them and the result is returned in their frame (and, with
                ``align_to_input_ext_scale``, their scale).  NaN rows mark views without a
                known pose: the posed views then anchor the global alignment (no conditioning)
                and the result is in their frame.
            cache_dir: where chunk predictions of a long run are kept so that the same call
                resumes after an interruption (removed on success; default: a temporary folder).
            progress: a callable receiving :class:`~da3_plugins.core.pipeline.ProgressEvent`.
            pool: workers holding this same model that run the passes of a long input
                (:class:`~da3_plugins.core.predictor.ChunkPool`; ``da3p reconstruct --ray``);
                the result equals the serial one.

        The result's ``options`` is a :class:`~da3_plugins.core.options.SceneOptions`: these
        options with the values actually used, plus ``camera_source`` and ``passes``.
        """
        from ..pipeline import reconstruct

        return reconstruct(self, images, options, extrinsics=extrinsics, intrinsics=intrinsics, fps=fps,
                           progress=progress, cache_dir=cache_dir, pool=pool, **option_values)

    def save_pretrained(self, folder: Union[str, os.PathLike], dtype: torch.dtype = torch.float32) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in the published layout.

        ``dtype=torch.float16`` halves the file (weights are loaded back as float32)."""
        from safetensors.torch import save_file

        from ..reconstruction import atomic_path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.to("cpu", dtype if v.is_floating_point() else v.dtype)
                   for k, v in checkpoint_state_dict(self.net).items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        with atomic_path(folder / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps({"model_name": self.preset}, indent=2) + "\n")
        return folder


def load_model(
    source: Union[str, os.PathLike],
    *,
    device: Union[str, torch.device, None] = None,
    dtype: Union[str, torch.dtype, None] = "auto",
    preset: Union[str, ModelConfig, None] = None,
    revision: Optional[str] = None,
) -> DA3Model:
    """Load a DA3 model.

    Args:
        source: a folder laid out like a hub repo (``config.json`` + ``model.safetensors``),
            a ``.safetensors`` file (with ``preset=``, or a ``config.json`` beside it), or a
            hub repo id such as ``"depth-anything/DA3-BASE"`` (downloaded with
            huggingface_hub, the ``hub`` extra), or ``"embedded"``: the small demo model
            shipped inside the package (da3-tiny, trained on synthetic scenes).
        device: ``None``/``"auto"`` picks CUDA, then MPS, then CPU.
        dtype: precision of the ViT backbone.  ``"auto"`` (the default; also ``None``) picks
            it for the device: bf16 autocast on CUDA GPUs with native bfloat16, fp16 on other
            GPUs and on Apple MPS, and on the CPU bf16 only with AMX, else fp32 (the rules,
            the ``DA3P_CPU_PRECISION`` override and the probe: ``core/precision.py``).
            ``"fp32"`` is exact; ``"bf16"`` / ``"fp16"`` autocast the backbone; ``"int8"``
            (CPU only) runs it with dynamically quantised int8 Linear layers (faster,
            approximate).  The weights and all heads stay float32; ``model.precision``
            says what was chosen.
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
    set_precision(net, dtype)
    return DA3Model(net=net, preset=preset, config=config, source=description)


def random_model(preset: Union[str, ModelConfig], *, seed: int = 0, device=None) -> DA3Model:
    """A model with random weights (for tests and benchmarks); ``preset`` may be a config.
    It runs in exact fp32 (``core.precision.set_precision`` changes that)."""
    from .network import build_network

    config = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    net = build_network(config).to(resolve_device(device)).eval()
    return DA3Model(net=net, preset=config.name, config=config, source="random")
