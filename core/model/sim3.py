"""Least-squares similarity transform between two point sets (Umeyama, 1991), batched in torch.

The numbers match ``evo.core.geometry.umeyama_alignment(x=src.T, y=dst.T, with_scale=True)``,
which is what the official DA3 code reaches through ``PosePath3D.align(correct_scale=True)``:

* centred sets  X = src - mean(src),  Y = dst - mean(dst)
* variance      var = mean_i |X_i|^2
* covariance    C = (1/n) sum_i Y_i X_i^T = U diag(d) V^T
* reflection    E = diag(1, 1, det(U) det(V) < 0 ? -1 : 1)
* R = U E V^T,  s = trace(diag(d) E) / var,  t = mean(dst) - s R mean(src)

so that dst_i ~= s R src_i + t.  Everything is computed in float64.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

# evo's rank test compares the singular values of C with the float64 machine epsilon
# (an absolute threshold); we use the same number so that the two fail on the same inputs.
_EPS64 = torch.finfo(torch.float64).eps


def umeyama_sim3(src: Tensor, dst: Tensor, allow_collinear: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Similarity (R, t, s) with dst ~= s * R @ src + t, batched over leading dimensions.

    Args:
        src: (..., N, 3) points to be mapped (evo's ``x``, the estimate).
        dst: (..., N, 3) target points (evo's ``y``, the reference).
        allow_collinear: accept point sets whose covariance has rank 1 (two points, or
            points on a line).  The scale is then still well defined (a ratio of spreads)
            but the rotation about that line is arbitrary.  Off by default.

    Returns:
        R (..., 3, 3) proper rotation, t (..., 3), s (...), in the promoted dtype of the
        inputs (float64 inside).

    Raises:
        ValueError: for degenerate input in any batch element: fewer than 3 points (2 with
            ``allow_collinear``), zero spread of ``src``, or a covariance with fewer than 2
            (1 with ``allow_collinear``) singular values above float64 epsilon -- the
            condition under which evo raises.  Callers fall back on their own default.
    """
    if src.shape != dst.shape or src.shape[-1:] != (3,) or src.dim() < 2:
        raise ValueError(f"expected two (..., N, 3) point sets of one shape, got {tuple(src.shape)} and {tuple(dst.shape)}")
    n = src.shape[-2]
    min_points = 2 if allow_collinear else 3
    if n < min_points:
        raise ValueError(f"Umeyama alignment needs at least {min_points} points, got {n}")
    out_dtype = torch.promote_types(src.dtype, dst.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.float64
    x = src.detach().to(torch.float64)
    y = dst.detach().to(torch.float64)

    mean_x = x.mean(-2)
    mean_y = y.mean(-2)
    xc = x - mean_x[..., None, :]
    yc = y - mean_y[..., None, :]
    var_x = (xc * xc).sum((-2, -1)) / n
    cov = yc.transpose(-1, -2) @ xc / n  # (..., 3, 3), rows follow dst, columns src

    u, d, vh = torch.linalg.svd(cov)
    min_rank = 1 if allow_collinear else 2
    rank_ok = (d > _EPS64).sum(-1) >= min_rank
    if not bool(torch.all(rank_ok & (var_x > 0))):
        raise ValueError("degenerate point sets: Umeyama alignment is not possible")

    # keep R a rotation: flip the weakest singular direction if U V^T would reflect
    flip = torch.linalg.det(u) * torch.linalg.det(vh) < 0
    e = torch.ones_like(d)
    e[..., 2] = torch.where(flip, -1.0, 1.0)
    rot = (u * e[..., None, :]) @ vh
    scale = (d * e).sum(-1) / var_x
    trans = mean_y - scale[..., None] * (rot @ mean_x[..., None])[..., 0]
    return rot.to(out_dtype), trans.to(out_dtype), scale.to(out_dtype)
