"""Geometry and evaluation metrics, batched, numpy in and out.

Conventions (``docs/conventions.md``): depth is z-depth; poses are OpenCV world-to-camera
``(N, 3|4, 4)``; intrinsics are in pixels with pixel centres at (i + 0.5, j + 0.5).

* points: :func:`depth_to_camera_points`, :func:`depth_to_world_points`
* alignment: :func:`umeyama` (Sim(3)), :func:`apply_sim3_to_w2c`
* poses: :func:`relative_pose_errors`, :func:`pose_auc` (the DA3 paper's AUC@3/@30)
* depth: :func:`abs_rel`, :func:`delta1`
* reconstruction: :func:`chamfer_and_fscore`
* rays: :func:`rays_to_cameras` (the DA3 ray-map route, DLT + RQ/QL, from ``ray_pose``)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from . import conventions as conv


# --------------------------------------------------------------------------- points


def depth_to_camera_points(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(N, H, W) z-depth and (N, 3, 3) K -> (N, H, W, 3) camera-frame points at pixel centres."""
    depth = np.asarray(depth)
    k = np.asarray(intrinsics, np.float64)
    if depth.ndim != 3 or k.shape != (depth.shape[0], 3, 3):
        raise ValueError(f"depth (N, H, W) and intrinsics (N, 3, 3) expected, got {depth.shape} and {k.shape}")
    u, v = conv.pixel_centres(depth.shape[1], depth.shape[2])
    pix = np.stack((u, v, np.ones_like(u)), -1)
    rays = np.einsum("nij,hwj->nhwi", np.linalg.inv(k), pix)
    return rays * depth[..., None]


def depth_to_world_points(depth: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """(N, H, W) z-depth, K and world-to-camera poses -> (N, H, W, 3) world points."""
    cam = depth_to_camera_points(depth, intrinsics)
    c2w = conv.w2c_to_c2w(extrinsics)
    if c2w.shape[0] != cam.shape[0]:
        raise ValueError(f"extrinsics: expected {cam.shape[0]} poses, got {c2w.shape[0]}")
    return np.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


# --------------------------------------------------------------------------- alignment


def umeyama(src: np.ndarray, dst: np.ndarray, allow_collinear: bool = False) -> Tuple[np.ndarray, np.ndarray, float]:
    """Similarity (R, t, s) with dst ~= s R src + t for (M, 3) point sets (least squares)."""
    import torch

    from .sim3 import umeyama_sim3

    r, t, s = umeyama_sim3(torch.from_numpy(np.asarray(src, np.float64)), torch.from_numpy(np.asarray(dst, np.float64)),
                           allow_collinear=allow_collinear)
    return r.numpy(), t.numpy(), float(s)


def apply_sim3_to_w2c(w2c: np.ndarray, r: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """World-to-camera poses of a world mapped by X -> s R X + t; returns (N, 3, 4).

    The cameras keep seeing the same (scaled) scene: depths of the new poses are s times the old.
    """
    c2w = conv.w2c_to_c2w(w2c)
    c2w[:, :3, :3] = r @ c2w[:, :3, :3]
    c2w[:, :3, 3] = s * c2w[:, :3, 3] @ np.asarray(r).T + t
    return conv.c2w_to_w2c(c2w)


# --------------------------------------------------------------------------- poses


def _rot_to_quat(r: np.ndarray) -> np.ndarray:
    return conv.rotation_to_quaternion(r)


def relative_pose_errors(pred_w2c: np.ndarray, gt_w2c: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation and translation-direction errors (degrees) of every pair i < j.

    Poses are first made relative to view 0 (E_i E_0^-1); then rel_ij = E_i^-1 E_j for
    prediction and truth; rotation error
    arccos(2 <q_p, q_g>^2 - 1); translation error the angle between the unit translations,
    folded to min(e, 180 - e) (the direction's sign is ambiguous); scale-free.
    """
    p, g = conv.as_4x4(pred_w2c), conv.as_4x4(gt_w2c)
    if p.shape != g.shape or p.shape[0] < 2:
        raise ValueError(f"pred_w2c / gt_w2c: expected two (N, 3|4, 4) arrays with N >= 2, got {p.shape} and {g.shape}")
    # relative to view 0 first (E_i E_0^-1), so that the world frame and scale do not matter
    p, g = p @ np.linalg.inv(p[:1]), g @ np.linalg.inv(g[:1])
    i, j = np.triu_indices(len(p), 1)
    rel_p = np.linalg.inv(p[i]) @ p[j]
    rel_g = np.linalg.inv(g[i]) @ g[j]
    qp, qg = _rot_to_quat(rel_p[:, :3, :3]), _rot_to_quat(rel_g[:, :3, :3])
    dot2 = np.clip((qp * qg).sum(-1) ** 2, 0, 1)
    r_err = np.degrees(np.arccos(np.clip(1 - 2 * np.maximum(1 - dot2, 1e-15), -1, 1)))
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    norms = np.linalg.norm(tp, axis=-1) * np.linalg.norm(tg, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.abs((tp * tg).sum(-1)) / np.maximum(norms, 1e-15)
    t_err = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    t_err = np.where(np.isfinite(t_err), t_err, 1e6)
    t_err = np.minimum(t_err, np.abs(180 - t_err))
    return r_err, t_err


def pose_auc(pred_w2c: np.ndarray, gt_w2c: np.ndarray, thresholds: Sequence[int] = (3, 5, 15, 30)) -> dict:
    """Area under the accuracy curve of max(rotation, translation) pair errors, in [0, 1].

    As the DA3 benchmark computes it: a histogram of the errors over integer bins 0..T,
    divided by the number of pairs, accumulated and averaged.  Returns {"auc3": ..., ...}
    (multiply by 100 for the paper's numbers).
    """
    r, t = relative_pose_errors(pred_w2c, gt_w2c)
    err = np.maximum(r, t)
    out = {}
    for thr in thresholds:
        hist, _ = np.histogram(err, bins=np.arange(thr + 1))
        out[f"auc{thr}"] = float(np.mean(np.cumsum(hist / len(err))))
    return out


# --------------------------------------------------------------------------- depth


def _align_depth(pred, gt, mask, align: str):
    p, g = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    if align == "none":
        return p, g
    if align == "median":
        return p * (np.median(g) / max(np.median(p), 1e-12)), g
    if align == "scale":
        return p * ((p * g).sum() / max((p * p).sum(), 1e-12)), g
    raise ValueError(f"align: expected 'none', 'median' or 'scale', got {align!r}")


def _depth_mask(pred, gt, mask):
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt depth shapes differ: {pred.shape} vs {gt.shape}")
    m = np.isfinite(gt) & (gt > 0) & np.isfinite(pred)
    if mask is not None:
        m &= np.asarray(mask, bool)
    if not m.any():
        raise ValueError("mask: no valid pixel to evaluate")
    return pred, gt, m


def abs_rel(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None, align: str = "none") -> float:
    """mean |d - d*| / d* over valid pixels (gt > 0).  ``align``: "none", "median" (scale
    by the ratio of medians) or "scale" (least-squares scale) for relative depth."""
    pred, gt, m = _depth_mask(pred, gt, mask)
    p, g = _align_depth(pred, gt, m, align)
    return float(np.mean(np.abs(p - g) / g))


def delta1(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None, align: str = "none") -> float:
    """Fraction of valid pixels with max(d/d*, d*/d) < 1.25 (same ``align`` as :func:`abs_rel`)."""
    pred, gt, m = _depth_mask(pred, gt, mask)
    p, g = _align_depth(pred, gt, m, align)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(p / g, g / p)
    return float(np.mean(ratio < 1.25))


# --------------------------------------------------------------------------- reconstruction


def nearest_distances(query: np.ndarray, points: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Distance from each query point to its nearest neighbour in ``points`` (exact).

    Uses scipy's cKDTree when scipy is installed, otherwise chunked torch.cdist.
    """
    q = np.asarray(query, np.float64).reshape(-1, 3)
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) == 0:
        raise ValueError("points: empty point set")
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        import torch

        pt = torch.from_numpy(p).float()
        out = np.empty(len(q))
        for s in range(0, len(q), chunk):
            qt = torch.from_numpy(q[s:s + chunk]).float()
            best = torch.full((len(qt),), float("inf"))
            for t in range(0, len(pt), 65536):
                best = torch.minimum(best, torch.cdist(qt, pt[t:t + 65536]).min(1).values)
            out[s:s + chunk] = best.double().numpy()
        return out
    return cKDTree(p).query(q, k=1, workers=-1)[0]


@dataclass
class ReconstructionScores:
    """Accuracy (pred -> gt), completeness (gt -> pred), their mean (Chamfer), and the
    precision / recall / F-score at ``threshold``."""

    accuracy: float
    completeness: float
    chamfer: float
    precision: float
    recall: float
    fscore: float
    threshold: float


def chamfer_and_fscore(pred_points: np.ndarray, gt_points: np.ndarray, threshold: float) -> ReconstructionScores:
    """Chamfer distance and F-score of two point clouds, as the DA3 benchmark computes them."""
    if threshold <= 0:
        raise ValueError(f"threshold: expected > 0, got {threshold}")
    d_pred = nearest_distances(pred_points, gt_points)
    d_gt = nearest_distances(gt_points, pred_points)
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    prec, rec = float((d_pred < threshold).mean()), float((d_gt < threshold).mean())
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return ReconstructionScores(acc, comp, (acc + comp) / 2, prec, rec, f, float(threshold))


# --------------------------------------------------------------------------- rays


def rays_to_cameras(rays: np.ndarray, image_size: Tuple[int, int], conf: Optional[np.ndarray] = None,
                    seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """DA3's ray map -> cameras: (N, h, w, 6) rays (world direction, camera centre) ->
    world-to-camera (N, 3, 4) and K (N, 3, 3) in pixels of ``image_size`` = (H, W).

    The DLT / QL route of :mod:`ray_pose` (robust homography fit, then rotation and
    calibration from its factorisation); exact for noise-free rays of cameras with a centred
    principal point.
    """
    import torch

    from .ray_pose import rays_to_cameras as _route

    r = torch.from_numpy(np.asarray(rays, np.float32))[None]
    c = torch.ones(r.shape[:-1]) if conf is None else torch.from_numpy(np.asarray(conf, np.float32))[None]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ext, k = _route(r, c, image_size)
    return ext[0].double().numpy(), k[0].double().numpy()
