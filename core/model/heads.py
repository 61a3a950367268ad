"""DPT-family dense heads: DualDPT (depth + ray), DPT (depth + sky), GSDPT (raw Gaussians).

Parameter names follow the published checkpoints (``head.projects.0.weight``,
``head.scratch.refinenet1.resConfUnit2.conv1.weight`` ...).  All heads run in float32.

Frames (batch x views) are processed in chunks so that memory stays bounded for many
views; chunking does not change any number.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import HeadConfig

# Frames per head pass: bounds the full-resolution intermediates (4 measured lower peak
# memory than the official 8 and no slower on CPU).
FRAMES_PER_CHUNK = 4


def _resize(x: Tensor, size: Tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def uv_embedding(h: int, w: int, c: int, aspect: float, device, ratio: float = 0.1) -> Tensor:
    """Sinusoidal embedding of normalised (u, v) map coordinates: (1, c, h, w) float32.

    u spans [-a, a] and v [-b, b] (pixel centres of a w x h grid on a unit-diagonal
    rectangle of the image's aspect ratio); the channels are
    [sin(u w_k), cos(u w_k), sin(v w_k), cos(v w_k)], w_k = 100^(-k / (c/4)).
    """
    diag = math.sqrt(aspect * aspect + 1.0)
    span_x, span_y = aspect / diag, 1.0 / diag
    u = torch.linspace(-span_x * (w - 1) / w, span_x * (w - 1) / w, w, dtype=torch.float32, device=device)
    v = torch.linspace(-span_y * (h - 1) / h, span_y * (h - 1) / h, h, dtype=torch.float32, device=device)
    q = c // 4
    omega = 1.0 / 100.0 ** (torch.arange(q, dtype=torch.float32, device=device) / q)
    au = u[:, None] * omega  # (w, q)
    av = v[:, None] * omega  # (h, q)
    emb_u = torch.cat((au.sin(), au.cos()), -1)[None].expand(h, w, 2 * q)
    emb_v = torch.cat((av.sin(), av.cos()), -1)[:, None].expand(h, w, 2 * q)
    emb = torch.cat((emb_u, emb_v), -1).permute(2, 0, 1)[None]
    return emb * ratio


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # the first ReLU must keep x (it is added back); the second acts on a temporary
        return self.conv2(F.relu_(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """y (+ RCU1(skip)) -> RCU2 -> bilinear resize (align_corners) -> 1x1 conv."""

    def __init__(self, features: int, has_skip: bool = True) -> None:
        super().__init__()
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, y: Tensor, skip: Optional[Tensor], size: Tuple[int, int]) -> Tensor:
        if skip is not None:
            y = y + self.resConfUnit1(skip)
        return self.out_conv(_resize(self.resConfUnit2(y), size))


class _Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


def _head3(cin: int, cout: int, mid: int = 32) -> nn.Sequential:
    """[conv3x3 cin->mid, ReLU, conv1x1 mid->cout] (keys .0 and .2)."""
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1))


class _Scratch(nn.Module):
    """Container that gives the head's inner modules their checkpoint names."""


class DPTBase(nn.Module):
    """Shared pyramid and fusion machinery of the DPT-family heads."""

    def __init__(self, cfg: HeadConfig, token_norm: bool, pos_embed: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_embed = pos_embed
        oc, f = cfg.out_channels, cfg.features
        if token_norm:
            self.norm = nn.LayerNorm(cfg.dim_in, eps=1e-5)
        else:
            self.norm = None
        self.projects = nn.ModuleList(nn.Conv2d(cfg.dim_in, c, 1) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], 4, stride=4),
            nn.ConvTranspose2d(oc[1], oc[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], 3, stride=2, padding=1),
        ])
        self.scratch = _Scratch()
        for i, c in enumerate(oc, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, f, 3, padding=1, bias=False))
        self._add_fusion_chain("")
        self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, padding=1)

    def _add_fusion_chain(self, suffix: str) -> None:
        f = self.cfg.features
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}{suffix}", FusionBlock(f, has_skip=i != 4))

    # -- pieces ---------------------------------------------------------------------------

    def _uv(self, x: Tensor, aspect: float) -> Tensor:
        """Add the UV embedding in place (x is always a fresh intermediate here)."""
        h, w = x.shape[-2:]
        return x.add_(uv_embedding(h, w, x.shape[1], aspect, x.device).to(x.dtype))

    def pyramid(self, feats: Sequence[Tensor], ph: int, pw: int, aspect: float) -> List[Tensor]:
        """Four (F, P, Cin) token maps -> four fusion inputs at 4x, 2x, 1x and 1/2x the patch grid."""
        levels = []
        for i, tok in enumerate(feats):
            if self.norm is not None:
                tok = self.norm(tok)
            m = tok.transpose(1, 2).reshape(tok.shape[0], tok.shape[-1], ph, pw)
            m = self.projects[i](m)
            if self.pos_embed:
                m = self._uv(m, aspect)
            m = self.resize_layers[i](m)
            levels.append(getattr(self.scratch, f"layer{i + 1}_rn")(m))
        return levels

    def fuse(self, levels: List[Tensor], suffix: str = "") -> Tensor:
        """Top-down fusion: returns the 8x map of the last fusion block."""
        sc = self.scratch
        l1, l2, l3, l4 = levels
        y = getattr(sc, f"refinenet4{suffix}")(l4, None, l3.shape[-2:])
        y = getattr(sc, f"refinenet3{suffix}")(y, l3, l2.shape[-2:])
        y = getattr(sc, f"refinenet2{suffix}")(y, l2, l1.shape[-2:])
        h, w = l1.shape[-2:]
        return getattr(sc, f"refinenet1{suffix}")(y, l1, (int(h * 2), int(w * 2)))

    def fused_features(self, levels: List[Tensor], h: int, w: int) -> Tensor:
        """Main chain -> output_conv1 -> resize to the image size (F/2 channels)."""
        return _resize(self.scratch.output_conv1(self.fuse(levels)), (h, w))

    def forward(self, feats: Sequence[Tensor], images: Tensor, **kwargs) -> Dict[str, Tensor]:
        """feats: four (B, S, P, Cin) maps; images: (B, S, 3, H, W) normalised input.

        Returns a dict of (B, S, ...) tensors; the keys depend on the head.
        """
        b, s, _, h, w = images.shape
        ph, pw = h // 14, w // 14
        flat = [f.flatten(0, 1).float() for f in feats]
        img = images.flatten(0, 1)
        chunks = []
        for start in range(0, b * s, FRAMES_PER_CHUNK):
            sl = slice(start, start + FRAMES_PER_CHUNK)
            chunks.append(self.predict([f[sl] for f in flat], img[sl], ph, pw, h, w, **kwargs))
        return {k: torch.cat([c[k] for c in chunks]).unflatten(0, (b, s)) for k in chunks[0]}

    def predict(self, feats, img, ph, pw, h, w, **kwargs) -> Dict[str, Tensor]:  # pragma: no cover
        raise NotImplementedError


class DualDPT(DPTBase):
    """Any-view head: depth (exp) + confidence (exp + 1), and optionally the ray map.

    The ray branch has its own fusion chain; only its finest level (8x the patch grid) is
    used, so the three coarser ``output_conv1_aux`` / ``output_conv2_aux`` levels exist
    only to hold checkpoint weights and are never computed.  The ray branch as a whole runs
    only when asked for (``with_ray``): with the camera decoder its result is not needed.
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__(cfg, token_norm=True, pos_embed=True)
        f = cfg.features
        self.scratch.output_conv2 = _head3(f // 2, cfg.output_dim)
        self._add_fusion_chain("_aux")
        self.scratch.output_conv1_aux = nn.ModuleList(
            nn.Sequential(*(nn.Conv2d(f if j % 2 == 0 else f // 2, f // 2 if j % 2 == 0 else f, 3, padding=1)
                            for j in range(5)))
            for _ in range(4)
        )
        # One LayerNorm object is shared by all four levels (as in the official model), so
        # checkpoints written with safetensors' save_model store it once.
        shared_ln = nn.LayerNorm(32, eps=1e-5)
        self.scratch.output_conv2_aux = nn.ModuleList(
            nn.Sequential(nn.Conv2d(f // 2, 32, 3, padding=1), _Permute(0, 2, 3, 1), shared_ln,
                          _Permute(0, 3, 1, 2), nn.ReLU(inplace=True), nn.Conv2d(32, 7, 1))
            for _ in range(4)
        )

    def predict(self, feats, img, ph, pw, h, w, with_ray: bool = False) -> Dict[str, Tensor]:
        aspect = w / h
        levels = self.pyramid(feats, ph, pw, aspect)
        out = self.scratch.output_conv2(self._uv(self.fused_features(levels, h, w), aspect))
        res = {"depth": out[:, 0].exp(), "depth_conf": out[:, 1].exp() + 1}
        if with_ray:
            y = self.scratch.output_conv1_aux[3](self.fuse(levels, "_aux"))
            y = self.scratch.output_conv2_aux[3](self._uv(y, aspect)).permute(0, 2, 3, 1)
            res["ray"] = y[..., :6]
            res["ray_conf"] = y[..., 6].exp() + 1
        return res


class DPT(DPTBase):
    """Monocular head: depth (exp) and sky score (ReLU)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__(cfg, token_norm=False, pos_embed=False)
        f = cfg.features
        self.scratch.output_conv2 = _head3(f // 2, cfg.output_dim)
        self.scratch.sky_output_conv2 = _head3(f // 2, 1)

    def predict(self, feats, img, ph, pw, h, w) -> Dict[str, Tensor]:
        feat = self.fused_features(self.pyramid(feats, ph, pw, w / h), h, w)
        return {
            "depth": self.scratch.output_conv2(feat)[:, 0].exp(),
            "sky": F.relu(self.scratch.sky_output_conv2(feat)[:, 0]),
        }


class GSDPT(DPTBase):
    """Gaussian head: raw per-pixel Gaussian parameters plus a sigmoid confidence.

    The normalised input image enters through ``images_merger`` at full resolution.
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__(cfg, token_norm=False, pos_embed=True)
        f = cfg.features
        self.scratch.output_conv2 = _head3(f // 2, cfg.output_dim)
        self.images_merger = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.GELU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.GELU(),
            nn.Conv2d(64, f // 2, 3, padding=1), nn.GELU(),
        )

    def predict(self, feats, img, ph, pw, h, w) -> Dict[str, Tensor]:
        aspect = w / h
        feat = self.fused_features(self.pyramid(feats, ph, pw, aspect), h, w)
        feat = self._uv(feat + self.images_merger(img.float()), aspect)
        out = self.scratch.output_conv2(feat).permute(0, 2, 3, 1)
        return {"raw_gs": out[..., :-1], "raw_gs_conf": torch.sigmoid(out[..., -1])}


def build_head(cfg: HeadConfig) -> DPTBase:
    return {"dualdpt": DualDPT, "dpt": DPT, "gsdpt": GSDPT}[cfg.kind](cfg)
