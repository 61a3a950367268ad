"""DINOv2 backbone with DA3's alternating within-view / cross-view attention.

Module and parameter names follow the published checkpoints
(``backbone.pretrained.blocks.{i}.attn.qkv.weight`` ...).  ``Backbone`` owns the
forward logic; ``backbone.pretrained`` only holds the ViT parameters.

Token layout: every view carries ``1 + ph*pw`` tokens; token 0 is the "special" token
(the DINO cls token before ``alt_start``, the camera token from then on).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..options import REF_VIEW_STRATEGIES
from .config import PATCH_SIZE, BackboneConfig

# Reference-view selection only runs from this many views on.
MIN_VIEWS_FOR_REF_SELECTION = 3


# ----------------------------------------------------------------------------- layers


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """Fused SwiGLU: w12 gives [x1 | x2]; out = w3(SiLU(x1) * x2)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class RotaryTable:
    """cos/sin tables of DA3's 2-D RoPE for one token layout.

    For a head width d, the first d/2 channels rotate with the row coordinate and the
    last d/2 with the column coordinate; within each half the rotation is "rotate half"
    (GPT-NeoX style) with frequencies base^(-2k/(d/2)), k < d/4, duplicated.
    """

    def __init__(self, pos_yx: Tensor, head_dim: int, base: float) -> None:
        quarter = head_dim // 4
        inv_freq = 1.0 / base ** (torch.arange(0, quarter, dtype=torch.float32, device=pos_yx.device) * 2 / (head_dim // 2))
        positions = torch.arange(int(pos_yx.max()) + 1, dtype=torch.float32, device=pos_yx.device)
        # an outer product through einsum, as upstream: under autocast it runs in reduced
        # precision, and the bf16 results only match if the angles are rounded alike
        self.angles = torch.einsum("i,j->ij", positions, inv_freq)  # (P, d/4)
        self.pos_yx = pos_yx
        self.half = head_dim // 2
        self._tables: dict = {}

    def _table(self, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
        if dtype not in self._tables:
            ang = self.angles.to(dtype)
            ang = torch.cat((ang, ang), -1)  # (P, d/2)
            cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)
            y, x = self.pos_yx[:, 0], self.pos_yx[:, 1]
            self._tables[dtype] = (torch.cat((cos[y], cos[x]), -1), torch.cat((sin[y], sin[x]), -1))  # (T, d)
        return self._tables[dtype]

    def apply(self, t: Tensor) -> Tensor:
        """t: (..., T, d) -> rotated t, computed in t's dtype (as upstream under autocast)."""
        q = self.half // 2
        h = self.half
        rot = torch.cat((-t[..., q:h], t[..., :q], -t[..., h + q:], t[..., h:h + q]), -1)
        cos, sin = self._table(t.dtype)
        return t * cos + rot * sin


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        if qk_norm:
            self.q_norm = nn.LayerNorm(self.head_dim, eps=1e-5)
            self.k_norm = nn.LayerNorm(self.head_dim, eps=1e-5)
        else:
            self.q_norm = self.k_norm = None
        self.proj = nn.Linear(dim, dim)

    def head_query_key(self, x: Tensor, head: int = 0) -> Tuple[Tensor, Tensor]:
        """One head's queries and keys of tokens x (..., T, C), QK-normed, without RoPE: (..., T, d) each.
        (For training aids that read the attention; ``forward`` does not use it.)"""
        c, d = x.shape[-1], self.head_dim
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x, w[head * d:(head + 1) * d], bias[head * d:(head + 1) * d])
        k = F.linear(x, w[c + head * d:c + (head + 1) * d], bias[c + head * d:c + (head + 1) * d])
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k

    def forward(self, x: Tensor, rope: Optional[RotaryTable] = None) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x))."""

    def __init__(self, dim: int, num_heads: int, ffn: str = "mlp", ffn_hidden: Optional[int] = None,
                 norm_eps: float = 1e-6, qk_norm: bool = False) -> None:
        super().__init__()
        hidden = ffn_hidden or 4 * dim
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = SwiGLU(dim, hidden) if ffn == "swiglu" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor, rope: Optional[RotaryTable] = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (F, ph*pw, C), row-major


class ViTParameters(nn.Module):
    """The parameters of the ViT, under the names the checkpoints use."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.pos_grid**2, c))
        if cfg.has_camera_token:
            # [0]: the reference view's token, [1]: shared by every other view
            self.camera_token = nn.Parameter(torch.zeros(1, 2, c))
        self.blocks = nn.ModuleList(
            Block(c, cfg.num_heads, cfg.ffn, cfg.ffn_hidden, norm_eps=1e-6,
                  qk_norm=cfg.qknorm_start != -1 and i >= cfg.qknorm_start)
            for i in range(cfg.depth)
        )
        # the final norm uses torch's default eps (upstream DINOv2 uses 1e-6 here)
        self.norm = nn.LayerNorm(c, eps=1e-5)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)


# ----------------------------------------------------------------------------- helpers


def select_reference_view(special: Tensor, strategy: str) -> Tensor:
    """Pick the reference view of each batch item from its special tokens (B, S, C) -> (B,)."""
    b, s, _ = special.shape
    if strategy == "first":
        return torch.zeros(b, dtype=torch.long, device=special.device)
    if strategy == "middle":
        return torch.full((b,), s // 2, dtype=torch.long, device=special.device)
    f = special.float()
    norm = f.norm(dim=-1)
    fn = f / norm.clamp_min(1e-12)[..., None]
    # cosine similarity with the self-similarity removed; the ~0 diagonal still takes
    # part in the statistics below, as in the official code
    sim = fn @ fn.transpose(1, 2) - torch.eye(s, device=f.device, dtype=f.dtype)
    if strategy == "saddle_sim_range":
        return (sim.max(-1).values - sim.min(-1).values).argmax(-1)
    if strategy == "saddle_balanced":
        metrics = torch.stack((sim.sum(-1) / (s - 1), norm, fn.var(dim=-1, unbiased=True)), -1)  # (B, S, 3)
        lo, hi = metrics.min(1, keepdim=True).values, metrics.max(1, keepdim=True).values
        score = ((metrics - lo) / (hi - lo + 1e-8) - 0.5).abs().sum(-1)
        return score.argmin(-1)
    raise ValueError(f"unknown ref_view_strategy {strategy!r}; expected one of {', '.join(REF_VIEW_STRATEGIES)}")


def _reference_order(ref: Tensor, s: int) -> Tensor:
    """(B,) reference indices -> (B, S) view order [ref, 0, 1, .., ref-1, ref+1, ..]."""
    idx = torch.arange(s, device=ref.device)
    others = idx[None].expand(ref.shape[0], s)
    # sort key: the reference first, then the others in their original order
    key = torch.where(others == ref[:, None], -1, others)
    return key.argsort(-1)


def _take_views(x: Tensor, order: Tensor) -> Tensor:
    """Gather views along dim 1 of x (B, S, ...) by order (B, S)."""
    return torch.gather(x, 1, order.reshape(order.shape + (1,) * (x.dim() - 2)).expand_as(x))


# ----------------------------------------------------------------------------- backbone


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.pretrained = ViTParameters(cfg)

    def is_cross_view(self, i: int) -> bool:
        """Is block i a cross-view block (from ``alt_start`` on, every odd block)?"""
        alt = self.cfg.alt_start
        return alt != -1 and i >= alt and i % 2 == 1

    def _position_embedding(self, ph: int, pw: int, dtype: torch.dtype) -> Tensor:
        pe = self.pretrained.pos_embed
        g = self.cfg.pos_grid
        if ph * pw == g * g and ph == pw:
            return pe.to(dtype)
        grid = pe[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
        # DINOv2's interpolation: driven by scale factors (n + 0.1) / g rather than a
        # target size (PyTorch then maps coordinates with exactly these factors)
        grid = F.interpolate(grid, scale_factor=((ph + 0.1) / g, (pw + 0.1) / g), mode="bicubic",
                             align_corners=False, antialias=False)
        if grid.shape[-2:] != (ph, pw):  # pragma: no cover - guards the (n + 0.1) trick
            raise RuntimeError(f"position embedding interpolated to {tuple(grid.shape[-2:])}, expected {(ph, pw)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, ph * pw, -1)
        return torch.cat((pe[:, :1].float(), grid), 1).to(dtype)

    def _rope_tables(self, ph: int, pw: int, views: int, device) -> Tuple[RotaryTable, RotaryTable]:
        cfg = self.cfg
        head_dim = cfg.embed_dim // cfg.num_heads
        ys, xs = torch.meshgrid(torch.arange(ph, device=device), torch.arange(pw, device=device), indexing="ij")
        patches = torch.stack((ys.flatten(), xs.flatten()), -1) + 1
        special = torch.zeros(1, 2, dtype=patches.dtype, device=device)
        local = RotaryTable(torch.cat((special, patches)), head_dim, cfg.rope_base)
        # Cross-view blocks see the views' tokens one after the other; every patch sits at
        # (1, 1) and each special token at (0, 0), so only the special-token <-> patch
        # offset is encoded (official behaviour, even within a view).
        flat = torch.cat((special, torch.ones_like(patches))).repeat(views, 1)
        glob = RotaryTable(flat, head_dim, cfg.rope_base)
        return local, glob

    def forward(
        self,
        x: Tensor,
        cam_token: Optional[Tensor] = None,
        ref_view_strategy: str = "saddle_balanced",
        export_feat_layers: Sequence[int] = (),
    ) -> Tuple[List[Tuple[Tensor, Tensor]], List[Tensor]]:
        """x: (B, S, 3, H, W) normalised images; cam_token: (B, S, C) or None.

        Returns four (patch_features (B, S, ph*pw, Cf), camera_token (B, S, Cf)) pairs,
        one per output layer, in the input view order, and the requested aux features
        (B, S, ph, pw, C) (these stay in the reference-first order, as upstream).
        """
        cfg = self.cfg
        p = self.pretrained
        b, s, _, h, w = x.shape
        ph, pw = h // PATCH_SIZE, w // PATCH_SIZE
        if ref_view_strategy not in REF_VIEW_STRATEGIES:
            raise ValueError(f"unknown ref_view_strategy {ref_view_strategy!r}; expected one of {', '.join(REF_VIEW_STRATEGIES)}")

        tokens = p.patch_embed(x.flatten(0, 1))
        # under autocast the patch tokens are low precision; concatenating the float32 cls
        # token promotes the residual stream to float32, which it then stays (as upstream)
        tokens = torch.cat((p.cls_token.expand(tokens.shape[0], -1, -1), tokens), 1)
        tokens = tokens + self._position_embedding(ph, pw, tokens.dtype)
        n_tok = tokens.shape[1]
        t = tokens.reshape(b, s, n_tok, -1)

        uses_rope = cfg.rope_start != -1
        rope_local = rope_global = None
        if uses_rope:
            rope_local, rope_global = self._rope_tables(ph, pw, s, x.device)

        alt = cfg.alt_start
        order = None  # (B, S) view order when a reference view was moved to the front
        local_t = t
        outputs: List[Tuple[Tensor, Tensor]] = []
        aux: List[Tensor] = []
        for i, blk in enumerate(p.blocks):
            if alt != -1 and i == alt - 1 and s >= MIN_VIEWS_FOR_REF_SELECTION and cam_token is None:
                ref = select_reference_view(t[:, :, 0], ref_view_strategy)
                order = _reference_order(ref, s)
                t = _take_views(t, order)
                local_t = _take_views(local_t, order)
            if alt != -1 and i == alt:
                t = t.clone()
                if cam_token is not None:
                    t[:, :, 0] = cam_token.to(t.dtype)
                else:
                    t[:, 0, 0] = p.camera_token[:, 0].to(t.dtype)
                    t[:, 1:, 0] = p.camera_token[:, 1].to(t.dtype)
            with_rope = uses_rope and i >= cfg.rope_start
            if self.is_cross_view(i):  # one sequence per batch item
                t = blk(t.reshape(b, s * n_tok, -1), rope_global if with_rope else None).reshape(b, s, n_tok, -1)
            else:  # within-view block
                t = blk(t.reshape(b * s, n_tok, -1), rope_local if with_rope else None).reshape(b, s, n_tok, -1)
                local_t = t
            if i in cfg.out_layers:
                out = torch.cat((local_t, t), -1) if cfg.cat_token else t
                if order is not None:
                    out = _take_views(out, order.argsort(-1))
                outputs.append(out)
            if i in export_feat_layers:
                aux.append(p.norm(t[:, :, 1:]).reshape(b, s, ph, pw, -1))

        c = cfg.embed_dim
        results = []
        for out in outputs:
            patches = out[:, :, 1:]
            if cfg.cat_token:
                # the local half stays un-normalised, the global half gets the final norm
                patches = torch.cat((patches[..., :c], p.norm(patches[..., c:])), -1)
            else:
                patches = p.norm(patches)
            results.append((patches, out[:, :, 0]))
        return results, aux
