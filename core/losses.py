"""Training losses of the DA3 paper and the teacher-student depth alignment (torch).

    L = L_D(D^, D) + L_M(R^, M) + L_P(D^ * d + t, P) + beta L_C(c^, v) + alpha L_grad(D^, D)

* :func:`depth_loss` -- confidence-weighted: mean over valid pixels of c |D^ - D| - lambda log c
  (the network learns c; uncertain pixels pay less for errors but pay log c for claiming it);
* :func:`ray_loss` -- L1 between predicted and true ray maps (directions and origins);
* :func:`point_loss` -- L1 between D^ * d + t (points from predicted depth along the predicted
  rays) and the true points;
* :func:`camera_loss` -- L1 between pose codes (translation, quaternion up to sign, fields of view);
* :func:`gradient_loss` -- L1 between the horizontal and vertical depth differences (edges);
* :func:`correspondence_loss` -- an optional training aid, not in the paper: cross-entropy that
  makes one attention head of each cross-view block point from a patch of view j to the patch
  of view 0 that sees the same surface (targets from :func:`correspondence_targets`); it only
  shapes training, the network and its outputs are unchanged;
* :func:`normalize_scene` -- ground truth divided by the mean distance of its valid points from
  the first camera, so that every scene has unit scale;
* :func:`ransac_scale_shift` -- aligns a teacher's relative depth to sparse / noisy metric depth.

All take (B, N, H, W) maps and a boolean ``mask`` of valid pixels.  The masked means divide by
the count of valid elements of the batch; their ``divisor`` argument replaces that count (for
data-parallel training, where each process holds a part of the batch, the count of the whole
batch divided by the number of processes: then the mean of the processes' losses is the whole
batch's loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor


Divisor = Optional[Callable[[Tensor], Tensor]]
"""Turns a batch's count of valid elements into what its masked sum is divided by; None: the
count itself (at least 1)."""


def _masked_mean(x: Tensor, mask: Tensor, divisor: Divisor = None) -> Tensor:
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m[..., None]
    m = m.expand_as(x)
    count = m.sum()
    return (x * m).sum() / (count.clamp(min=1.0) if divisor is None else divisor(count))


def depth_loss(pred: Tensor, gt: Tensor, conf: Tensor, mask: Tensor, lambda_c: float = 0.2,
               divisor: Divisor = None) -> Tensor:
    """(1/Z) sum_p m_p (c_p |D^_p - D_p| - lambda_c log c_p)."""
    return _masked_mean(conf * (pred - gt).abs() - lambda_c * torch.log(conf), mask, divisor)


def ray_loss(pred: Tensor, gt: Tensor, mask: Tensor, conf: Optional[Tensor] = None, lambda_c: float = 0.2,
             divisor: Divisor = None) -> Tensor:
    """Mean L1 between ray maps (..., 6) over valid cells; with the ray head's confidence
    ``conf`` it is weighted like the depth loss: c |R^ - R| - lambda_c log c."""
    err = (pred - gt).abs().sum(-1)
    if conf is not None:
        err = conf * err - lambda_c * torch.log(conf)
    return _masked_mean(err, mask, divisor)


def point_loss(depth: Tensor, directions: Tensor, origins: Tensor, gt_points: Tensor, mask: Tensor,
               divisor: Divisor = None) -> Tensor:
    """Mean L1 between D^ * d + t and the true points (..., 3) over valid pixels."""
    pts = depth[..., None] * directions + origins
    return _masked_mean((pts - gt_points).abs().sum(-1), mask, divisor)


def camera_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean L1 between 9-D pose codes [t (3), q (4), fov_h, fov_w]; q and -q are the same rotation."""
    t = (pred[..., :3] - gt[..., :3]).abs().sum(-1)
    q = torch.minimum((pred[..., 3:7] - gt[..., 3:7]).abs().sum(-1), (pred[..., 3:7] + gt[..., 3:7]).abs().sum(-1))
    fov = (pred[..., 7:9] - gt[..., 7:9]).abs().sum(-1)
    return (t + q + fov).mean()


def correspondence_targets(points: Tensor, mask: Tensor, depth: Tensor, intrinsics: Tensor, patch: int,
                           tol: float = 0.03) -> Tuple[Tensor, Tensor]:
    """Which patch of view 0 sees the surface at the centre of each patch of views 1..N-1.

    points (B, N, H, W, 3) in view 0's camera frame, mask (B, N, H, W) valid, depth (B, N, H, W)
    in the same units, intrinsics (B, N, 3, 3) pixels; ``patch`` the patch size.  A centre
    counts when its depth is valid, it projects in front of and inside view 0, and view 0's
    depth there agrees within ``tol`` (relative; otherwise it is occluded).
    Returns idx (B, N-1, P) row-major patch indices of view 0 and ok (B, N-1, P) bool.
    """
    b, n, h, w = depth.shape
    ph, pw = h // patch, w // patch
    rows = torch.arange(ph, device=depth.device) * patch + patch // 2
    cols = torch.arange(pw, device=depth.device) * patch + patch // 2
    pts = points[:, 1:][:, :, rows][:, :, :, cols]  # (B, N-1, ph, pw, 3)
    ok = mask[:, 1:][:, :, rows][:, :, :, cols]
    uvw = torch.einsum("bij,bnyxj->bnyxi", intrinsics[:, 0].to(pts.dtype), pts)
    z = uvw[..., 2]
    u = uvw[..., 0] / z.clamp(min=1e-9)
    v = uvw[..., 1] / z.clamp(min=1e-9)
    ok = ok & (z > 1e-9) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    ui = u.clamp(0, w - 1).long()
    vi = v.clamp(0, h - 1).long()
    seen = depth[:, 0][torch.arange(b, device=depth.device).view(b, 1, 1, 1), vi, ui]
    ok = ok & ((seen - z).abs() <= tol * z)
    idx = (vi // patch) * pw + ui // patch
    return idx.flatten(2), ok.flatten(2)


def correspondence_loss(queries: Tensor, keys: Tensor, idx: Tensor, ok: Tensor, divisor: Divisor = None) -> Tensor:
    """Cross-entropy of softmax(q k^T / sqrt(d)) over view 0's patches against ``idx``.

    queries (B, N-1, P, d): one head's queries of the patches of views 1..; keys (B, P, d): its
    keys of view 0's patches; idx, ok from :func:`correspondence_targets`.  Mean over ``ok``.
    """
    logits = torch.einsum("bnpd,bqd->bnpq", queries, keys) / queries.shape[-1] ** 0.5
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), idx.flatten(), reduction="none")
    return _masked_mean(ce, ok.flatten(), divisor)


def gradient_loss(pred: Tensor, gt: Tensor, mask: Tensor, divisor: Divisor = None) -> Tensor:
    """||grad_x D^ - grad_x D||_1 + ||grad_y D^ - grad_y D||_1 where both pixels are valid."""
    gx = (pred[..., :, 1:] - pred[..., :, :-1]) - (gt[..., :, 1:] - gt[..., :, :-1])
    gy = (pred[..., 1:, :] - pred[..., :-1, :]) - (gt[..., 1:, :] - gt[..., :-1, :])
    mx = mask[..., :, 1:] & mask[..., :, :-1]
    my = mask[..., 1:, :] & mask[..., :-1, :]
    return _masked_mean(gx.abs(), mx, divisor) + _masked_mean(gy.abs(), my, divisor)


def normalize_scene(depth: Tensor, points: Tensor, translations: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Divide depth (B, N, H, W), points (B, N, H, W, 3) in view 0's frame and camera translations
    (B, N, 3) by each scene's mean point distance from view 0's centre; returns them and the scale (B,)."""
    dist = points.norm(dim=-1)
    m = mask.to(dist.dtype)
    scale = (dist * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1.0)
    scale = scale.clamp(min=1e-6)
    return depth / scale[:, None, None, None], points / scale[:, None, None, None, None], \
        translations / scale[:, None, None], scale


@dataclass(frozen=True)
class LossWeights:
    depth: float = 1.0
    ray: float = 1.0
    point: float = 1.0
    camera: float = 1.0  # beta
    gradient: float = 1.0  # alpha
    lambda_c: float = 0.2
    correspondence: float = 0.0  # the optional attention-matching aid (0: off, as in the paper)


def total_loss(terms: Dict[str, Tensor], weights: LossWeights = LossWeights()) -> Tensor:
    """Weighted sum of the terms present (keys: depth, ray, point, camera, gradient)."""
    total = None
    for name, value in terms.items():
        w = getattr(weights, name)
        total = w * value if total is None else total + w * value
    if total is None:
        raise ValueError("terms: no loss term given")
    return total


def ransac_scale_shift(teacher: Tensor, metric: Tensor, mask: Optional[Tensor] = None, iterations: int = 200,
                       seed: int = 0) -> Tuple[float, float, Tensor]:
    """Fit metric ~= s * teacher + t robustly; -> (s, t, inlier mask over the valid samples).

    Least squares on everything first; its residuals' median absolute deviation (MAD) is the
    inlier threshold for RANSAC on pairs of samples, which keeps the model with the most
    inliers; then three rounds of: threshold 3 x 1.4826 x MAD of the current model's residuals,
    least squares on its inliers.
    """
    x = teacher.double().reshape(-1)
    y = metric.double().reshape(-1)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        x, y = x[keep], y[keep]
    if x.numel() < 2:
        raise ValueError("mask: need at least 2 valid samples to fit a scale and a shift")

    def lstsq(xs, ys):
        a = torch.stack([xs, torch.ones_like(xs)], 1)
        sol = torch.linalg.lstsq(a, ys[:, None]).solution[:, 0]
        return float(sol[0]), float(sol[1])

    s0, t0 = lstsq(x, y)
    res = y - (s0 * x + t0)
    thr = float((res - res.median()).abs().median())
    thr = max(thr, 1e-9 * float(y.abs().max()))
    g = torch.Generator().manual_seed(seed)
    best = (torch.zeros_like(x, dtype=torch.bool), s0, t0)
    for _ in range(iterations):
        i, j = torch.randint(0, x.numel(), (2,), generator=g).tolist()
        if x[i] == x[j]:
            continue
        s = float((y[i] - y[j]) / (x[i] - x[j]))
        t = float(y[i] - s * x[i])
        inl = (y - (s * x + t)).abs() <= thr
        if inl.sum() > best[0].sum():
            best = (inl, s, t)
    inl, s, t = best
    # refine: the threshold from the residuals of the current model (3 robust sigmas from
    # its median absolute deviation), then least squares on its inliers
    for _ in range(3):
        res = y - (s * x + t)
        mad = float((res - res.median()).abs().median())
        new = (res - res.median()).abs() <= max(3 * 1.4826 * mad, 1e-12)
        if new.sum() < 2:
            break
        inl = new
        s, t = lstsq(x[inl], y[inl])
    return s, t, inl
