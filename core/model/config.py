"""Typed architecture configs for the DA3 network family.

Every network is built in code from one of these frozen dataclasses; there is no YAML
registry.  ``PRESETS`` maps the official preset names (the ``model_name`` found in a
published ``config.json``) to their configs, and ``HUB_REPOS`` maps the Hugging Face
repository ids to preset names.

Reduced variants for tests and experiments are made with :func:`shrink_backbone`, which
keeps every width but uses fewer transformer blocks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional, Tuple, Union

from ..errors import OptionError
from ..options import PATCH_SIZE  # noqa: F401  (the ViT patch: one definition)


@dataclass(frozen=True)
class BackboneConfig:
    """DINOv2 ViT with DA3's alternating within-view / cross-view attention."""

    embed_dim: int
    """Token width C."""
    depth: int
    """Number of transformer blocks."""
    num_heads: int
    """Attention heads (the head width is 64 in every preset)."""
    ffn: Literal["mlp", "swiglu"]
    """``mlp``: fc1 -> GELU -> fc2.  ``swiglu``: fused w12 -> SiLU(x1) * x2 -> w3 (giant)."""
    ffn_hidden: int
    """Hidden width of the feed-forward block."""
    out_layers: Tuple[int, int, int, int]
    """Blocks whose outputs feed the heads."""
    alt_start: int = -1
    """First block of the camera-token / alternating-attention section; -1 disables it
    (and with it cross-view attention, the camera token and reference-view selection)."""
    qknorm_start: int = -1
    """First block with per-head LayerNorm on q and k; -1 disables."""
    rope_start: int = -1
    """First block with 2-D rotary position embedding; -1 disables."""
    cat_token: bool = True
    """Head features are [local | global] (2C) when true, else the block output (C)."""
    pos_grid: int = 37
    """Side of the learned position-embedding grid (518 / 14)."""
    rope_base: float = 100.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if len(self.out_layers) != 4 or any(not 0 <= i < self.depth for i in self.out_layers):
            raise ValueError(f"out_layers {self.out_layers} must be 4 block indices below depth {self.depth}")

    @property
    def has_camera_token(self) -> bool:
        return self.alt_start != -1

    @property
    def feature_dim(self) -> int:
        """Width of the features handed to the heads and the camera decoder."""
        return 2 * self.embed_dim if self.cat_token else self.embed_dim


@dataclass(frozen=True)
class HeadConfig:
    """A DPT-family dense head."""

    kind: Literal["dualdpt", "dpt", "gsdpt"]
    """``dualdpt``: depth + ray (any-view).  ``dpt``: depth + sky (mono/metric).
    ``gsdpt``: raw Gaussian parameters (giant)."""
    dim_in: int
    features: int
    out_channels: Tuple[int, int, int, int]
    output_dim: int


@dataclass(frozen=True)
class GaussianConfig:
    """Per-pixel Gaussian parameterisation of the giant model's GS head."""

    sh_degree: int = 2
    scale_min: float = 1e-5
    scale_max: float = 30.0

    @property
    def raw_channels(self) -> int:
        """xy offset (2) + scale (3) + quaternion (4) + SH (3 * (d+1)^2) + depth offset (1)."""
        return 2 + 3 + 4 + 3 * (self.sh_degree + 1) ** 2 + 1


@dataclass(frozen=True)
class NetConfig:
    """One DA3 network: backbone, dense head, optional camera encoder/decoder and GS branch."""

    name: str
    backbone: BackboneConfig
    head: HeadConfig
    with_camera: bool = True
    """Camera encoder (pose conditioning) and camera decoder (pose prediction)."""
    gs_head: Optional[HeadConfig] = None
    gaussians: Optional[GaussianConfig] = None

    def __post_init__(self) -> None:
        if (self.gs_head is None) != (self.gaussians is None):
            raise ValueError("gs_head and gaussians come together")
        if self.gs_head is not None and self.gs_head.output_dim != self.gaussians.raw_channels + 1:
            raise ValueError(
                f"gs_head.output_dim {self.gs_head.output_dim} must be the adapter's "
                f"{self.gaussians.raw_channels} raw channels + 1 confidence channel"
            )
        if self.with_camera and not self.backbone.has_camera_token:
            raise ValueError("a camera encoder/decoder needs a backbone with a camera token (alt_start != -1)")

    @property
    def is_nested(self) -> bool:
        return False


@dataclass(frozen=True)
class NestedConfig:
    """The nested model: an any-view network plus a metric network that sets its scale."""

    name: str
    anyview: NetConfig
    metric: NetConfig

    @property
    def is_nested(self) -> bool:
        return True


ModelConfig = Union[NetConfig, NestedConfig]


def _vit(name: str) -> dict:
    return {
        "vitt": dict(embed_dim=192, depth=8, num_heads=3, ffn="mlp", ffn_hidden=768),
        "vits": dict(embed_dim=384, depth=12, num_heads=6, ffn="mlp", ffn_hidden=1536),
        "vitb": dict(embed_dim=768, depth=12, num_heads=12, ffn="mlp", ffn_hidden=3072),
        "vitl": dict(embed_dim=1024, depth=24, num_heads=16, ffn="mlp", ffn_hidden=4096),
        # giant2: SwiGLU hidden = ((int(4 * 1536 * 2 / 3) + 7) // 8) * 8 = 4096
        "vitg": dict(embed_dim=1536, depth=40, num_heads=24, ffn="swiglu", ffn_hidden=4096),
    }[name]


def _anyview(name: str, vit: str, out_layers, alt_start: int, features: int, out_channels, gs: bool = False) -> NetConfig:
    backbone = BackboneConfig(
        **_vit(vit), out_layers=tuple(out_layers), alt_start=alt_start, qknorm_start=alt_start,
        rope_start=alt_start, cat_token=True,
    )
    dim_in = backbone.feature_dim
    head = HeadConfig("dualdpt", dim_in, features, tuple(out_channels), output_dim=2)
    gaussians = GaussianConfig() if gs else None
    gs_head = HeadConfig("gsdpt", dim_in, features, tuple(out_channels), gaussians.raw_channels + 1) if gs else None
    return NetConfig(name, backbone, head, with_camera=True, gs_head=gs_head, gaussians=gaussians)


def _monocular(name: str) -> NetConfig:
    backbone = BackboneConfig(**_vit("vitl"), out_layers=(4, 11, 17, 23), cat_token=False)
    head = HeadConfig("dpt", backbone.feature_dim, 256, (256, 512, 1024, 1024), output_dim=1)
    return NetConfig(name, backbone, head, with_camera=False)


PRESETS: dict = {
    # not an official checkpoint: the project's own CPU-sized demo model (embedded in the package)
    "da3-tiny": _anyview("da3-tiny", "vitt", (3, 5, 6, 7), 4, 32, (24, 48, 96, 192)),
    "da3-small": _anyview("da3-small", "vits", (5, 7, 9, 11), 4, 64, (48, 96, 192, 384)),
    "da3-base": _anyview("da3-base", "vitb", (5, 7, 9, 11), 4, 128, (96, 192, 384, 768)),
    "da3-large": _anyview("da3-large", "vitl", (11, 15, 19, 23), 8, 256, (256, 512, 1024, 1024)),
    "da3-giant": _anyview("da3-giant", "vitg", (19, 27, 33, 39), 13, 256, (256, 512, 1024, 1024), gs=True),
    "da3metric-large": _monocular("da3metric-large"),
    "da3mono-large": _monocular("da3mono-large"),
}
PRESETS["da3nested-giant-large"] = NestedConfig(
    "da3nested-giant-large", anyview=PRESETS["da3-giant"], metric=PRESETS["da3metric-large"]
)

#: Presets that are the project's own (no official checkpoint on the hub).
PROJECT_PRESETS: Tuple[str, ...] = ("da3-tiny",)

#: Hugging Face repositories of the official checkpoints -> preset names.
HUB_REPOS: dict = {
    "depth-anything/DA3NESTED-GIANT-LARGE-1.1": "da3nested-giant-large",
    "depth-anything/DA3NESTED-GIANT-LARGE": "da3nested-giant-large",
    "depth-anything/DA3-GIANT-1.1": "da3-giant",
    "depth-anything/DA3-GIANT": "da3-giant",
    "depth-anything/DA3-LARGE-1.1": "da3-large",
    "depth-anything/DA3-LARGE": "da3-large",
    "depth-anything/DA3-BASE": "da3-base",
    "depth-anything/DA3-SMALL": "da3-small",
    "depth-anything/DA3METRIC-LARGE": "da3metric-large",
    "depth-anything/DA3MONO-LARGE": "da3mono-large",
}

#: Licence of each official checkpoint (the code here is Apache-2.0 regardless).
CHECKPOINT_LICENSES: dict = {
    "da3-tiny": "Apache-2.0",
    "da3-small": "Apache-2.0",
    "da3-base": "Apache-2.0",
    "da3metric-large": "Apache-2.0",
    "da3mono-large": "Apache-2.0",
    "da3-large": "CC-BY-NC-4.0",
    "da3-giant": "CC-BY-NC-4.0",
    "da3nested-giant-large": "CC-BY-NC-4.0",
}


def get_preset(name: str) -> ModelConfig:
    """Return the config of a named preset, with an error listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise OptionError(f"unknown DA3 preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def shrink_backbone(cfg: NetConfig, depth: int, out_layers, alt_start: Optional[int] = None) -> NetConfig:
    """The same network with fewer blocks (widths unchanged): for fast tests on CPU.

    ``alt_start`` also moves ``qknorm_start`` and ``rope_start`` when the preset has them.
    """
    bb = cfg.backbone
    changes = dict(depth=depth, out_layers=tuple(out_layers))
    if bb.has_camera_token:
        start = bb.alt_start if alt_start is None else alt_start
        changes.update(alt_start=start, qknorm_start=start, rope_start=start)
    return dataclasses.replace(cfg, backbone=dataclasses.replace(bb, **changes))
