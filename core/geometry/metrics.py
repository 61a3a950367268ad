"""Evaluation metrics as the official DA3 benchmark computes them: pose AUC, depth AbsRel /
delta1, point-cloud Chamfer distance and F-score (``depth_anything_3/bench/utils.py``; spec
section 11, formula for formula).  numpy in and out (torch tensors accepted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .. import conventions as conv
from ..quaternions import matrix_to_quat_wxyz
from ._arrays import ArrayLike, as_numpy as _np
from .spatial import nearest_distances, voxel_down_sample

# --------------------------------------------------------------------------- poses


def relative_pose_errors(pred_w2c: ArrayLike, gt_w2c: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    """Rotation and translation-direction errors in degrees of every pair i < j.

    As the official ``bench/utils.compute_pose``: poses are made relative to view 0
    (``E_i E_0^-1``), then for every unordered pair (i < j, in ``torch.combinations`` order
    = ``np.triu_indices`` order) rel = ``E_i^-1 E_j`` for prediction and truth;

    * rotation error ``arccos(1 - 2 max(1 - <q_p, q_g>^2, 1e-15))``;
    * translation error: the angle between the unit translations of rel,
      ``arccos(sqrt(1 - max(1 - <t_p/(|t_p|+1e-15), t_g/(|t_g|+1e-15)>^2, 1e-15)))``
      (in [0, 90], sign-agnostic), NaN/inf replaced by 1e6 rad; then min(e, |180 - e|).

    Both are invariant to a global Sim(3) of either trajectory.  (The 1e-15 floors make
    identical poses give about 4e-6 degrees, not exactly 0.)

    Returns:
        r_err, t_err: (N (N-1) / 2,) float64 degrees.
    """
    p, g = conv.as_4x4(_np(pred_w2c, "pred_w2c")), conv.as_4x4(_np(gt_w2c, "gt_w2c"))
    if p.ndim != 3 or p.shape[0] < 2:
        raise ValueError(f"pred_w2c: expected shape (N, 3|4, 4) with N >= 2, got {p.shape}")
    if g.shape != p.shape:
        raise ValueError(f"gt_w2c: expected the shape of pred_w2c {p.shape}, got {g.shape}")
    p = p @ conv.invert_rigid(p[0])
    g = g @ conv.invert_rigid(g[0])
    i, j = np.triu_indices(len(p), 1)
    rel_p = conv.invert_rigid(p[i]) @ p[j]
    rel_g = conv.invert_rigid(g[i]) @ g[j]
    qp = matrix_to_quat_wxyz(rel_p[:, :3, :3])
    qg = matrix_to_quat_wxyz(rel_g[:, :3, :3])
    loss_q = np.maximum(1 - (qp * qg).sum(-1) ** 2, 1e-15)
    r_err = np.degrees(np.arccos(np.clip(1 - 2 * loss_q, -1.0, 1.0)))
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    tp = tp / (np.linalg.norm(tp, axis=-1, keepdims=True) + 1e-15)
    tg = tg / (np.linalg.norm(tg, axis=-1, keepdims=True) + 1e-15)
    loss_t = np.maximum(1 - (tp * tg).sum(-1) ** 2, 1e-15)
    with np.errstate(invalid="ignore"):
        t_rad = np.arccos(np.sqrt(1 - loss_t))
    t_rad = np.where(np.isfinite(t_rad), t_rad, 1e6)
    t_err = np.degrees(t_rad)
    t_err = np.minimum(t_err, np.abs(180 - t_err))
    return r_err, t_err


def pose_auc_from_errors(r_err: ArrayLike, t_err: ArrayLike, thresholds: Sequence[int] = (3, 5, 15, 30)
                         ) -> Dict[str, float]:
    """AUC of pair errors (degrees) as the official ``calculate_auc_np``; fractions in [0, 1].

    err = max(r, t) per pair; for each integer T: ``hist = np.histogram(err, bins=0..T)``
    (T unit bins, the last one closed: [T-1, T]), divided by the number of pairs, and
    ``mean(cumsum(hist))``.  Equivalently the mean over tau = 1..T of the fraction of pairs
    with err < tau (err <= T for tau = T): a coarse right Riemann sum, so an error of 0.4
    degrees counts fully, one in [k, k+1) counts (T - k) / T, and one above T counts 0.

    Returns:
        {"auc03": ..., "auc05": ..., "auc15": ..., "auc30": ...} (key ``f"auc{T:02d}"``),
        fractions in [0, 1]; multiply by 100 for the paper's tables.
    """
    r, t = _np(r_err, "r_err").ravel(), _np(t_err, "t_err").ravel()
    if r.shape != t.shape or r.size == 0:
        raise ValueError(f"r_err, t_err: expected two non-empty arrays of one size, got {r.size} and {t.size}")
    err = np.maximum(r, t)
    out = {}
    for thr in thresholds:
        if int(thr) != thr or thr < 1:
            raise ValueError(f"thresholds: expected integers >= 1, got {thr!r}")
        hist, _ = np.histogram(err, bins=np.arange(int(thr) + 1))
        out[f"auc{int(thr):02d}"] = float(np.mean(np.cumsum(hist.astype(float) / err.size)))
    return out


def pose_auc(pred_w2c: ArrayLike, gt_w2c: ArrayLike, thresholds: Sequence[int] = (3, 5, 15, 30)) -> Dict[str, float]:
    """Pose AUC of predicted against true world-to-camera poses (N, 3|4, 4), N >= 2, as the
    official benchmark: :func:`relative_pose_errors` then :func:`pose_auc_from_errors`.

    Returns fractions in [0, 1] keyed ``"auc03"``, ``"auc05"``, ``"auc15"``, ``"auc30"``
    (identical poses give 1.0; the paper reports 100x).  Scale- and frame-free.
    """
    r, t = relative_pose_errors(pred_w2c, gt_w2c)
    return pose_auc_from_errors(r, t, thresholds)


# --------------------------------------------------------------------------- depth

_ALIGN = ("none", "median", "lstsq", "scale", "lstsq_shift")


def _depth_inputs(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike]):
    p, g = _np(pred, "pred"), _np(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred: expected the shape of gt {g.shape}, got {p.shape}")
    m = np.isfinite(g) & (g > 0) & np.isfinite(p)
    if mask is not None:
        mk = _np(mask, "mask", None)
        if mk.shape != g.shape:
            raise ValueError(f"mask: expected shape {g.shape}, got {mk.shape}")
        m &= mk.astype(bool)
    if not m.any():
        raise ValueError("mask: no valid pixel to evaluate (gt > 0, finite pred and gt, inside mask)")
    return p[m], g[m]


def depth_scale(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, align: str = "median"
                ) -> Tuple[float, float]:
    """(scale, shift) that map ``pred`` onto ``gt`` over the valid pixels: ``s * pred + b``.

    align: "none" (1, 0); "median" (median(gt) / median(pred), 0); "lstsq" or "scale" (the
    least-squares scale <pred, gt> / max(<pred, pred>, 1e-12), the official
    ``least_squares_scale_scalar``, 0); "lstsq_shift" (least-squares scale and shift).
    One (s, b) for all views together: call per view for per-view alignment.
    """
    if align is None:
        align = "none"
    if align not in _ALIGN:
        raise ValueError(f"align: expected one of {_ALIGN}, got {align!r}")
    p, g = _depth_inputs(pred, gt, mask)
    if align == "none":
        return 1.0, 0.0
    if align == "median":
        return float(np.median(g) / max(float(np.median(p)), 1e-12)), 0.0
    if align in ("lstsq", "scale"):
        return float((p * g).sum() / max(float((p * p).sum()), 1e-12)), 0.0
    a = np.stack((p, np.ones_like(p)), -1)
    (s, b), *_ = np.linalg.lstsq(a, g, rcond=None)
    return float(s), float(b)


def depth_metrics(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, align: str = "none"
                  ) -> Dict[str, float]:
    """AbsRel and delta1 of (N, H, W) (or any shape) depth against ground truth.

    Valid pixels: gt finite and > 0, pred finite, and ``mask`` (bool, same shape) when given;
    all views are pooled.  ``pred`` is first aligned with :func:`depth_scale` (``align`` =
    "none" for metric depth, "median" / "lstsq" / "lstsq_shift" for relative depth).

    * ``abs_rel`` = mean |d - d*| / d*
    * ``delta1`` = fraction with max(d / d*, d* / d) < 1.25 (pred <= 0 counts as a failure)

    Returns {"abs_rel", "delta1", "scale", "shift", "count"}.
    """
    s, b = depth_scale(pred, gt, mask, align)
    p, g = _depth_inputs(pred, gt, mask)
    p = s * p + b
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.maximum(p / g, g / p)
    good = (p > 0) & (ratio < 1.25)
    return {"abs_rel": float(np.mean(np.abs(p - g) / g)), "delta1": float(np.mean(good)),
            "scale": s, "shift": b, "count": int(g.size)}


def abs_rel(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, align: str = "none") -> float:
    """mean |d - d*| / d* over valid pixels (see :func:`depth_metrics` for ``mask``/``align``)."""
    return depth_metrics(pred, gt, mask, align)["abs_rel"]


def delta1(pred: ArrayLike, gt: ArrayLike, mask: Optional[ArrayLike] = None, align: str = "none") -> float:
    """Fraction of valid pixels with max(d/d*, d*/d) < 1.25 (see :func:`depth_metrics`)."""
    return depth_metrics(pred, gt, mask, align)["delta1"]


# --------------------------------------------------------------------------- reconstruction


@dataclass
class ReconstructionScores:
    """Point-cloud reconstruction scores (distances in world units).

    accuracy: mean distance pred -> nearest gt; completeness: mean gt -> nearest pred;
    chamfer: their mean (the benchmark's "overall"); precision / recall: fraction of pred /
    gt points closer than ``threshold`` (strictly) to the other cloud; fscore: 2PR/(P+R)
    (0 when both are 0).
    """

    accuracy: float
    completeness: float
    chamfer: float
    precision: float
    recall: float
    fscore: float
    threshold: float

    def as_dict(self) -> Dict[str, float]:
        """The scores under the official benchmark's keys (acc, comp, overall, precision,
        recall, fscore)."""
        return {"acc": self.accuracy, "comp": self.completeness, "overall": self.chamfer,
                "precision": self.precision, "recall": self.recall, "fscore": self.fscore}

    def to_dict(self) -> Dict[str, float]:
        """All fields by name."""
        return asdict(self)


def chamfer_and_fscore(pred_points: ArrayLike, gt_points: ArrayLike, threshold: float,
                       down_sample: Optional[float] = None) -> ReconstructionScores:
    """Chamfer distance and F-score of two point clouds, as the official
    ``evaluate_3d_reconstruction`` computes them (exact nearest neighbours, no scipy).

    Args:
        pred_points: (M, 3) reconstructed points.
        gt_points: (K, 3) reference points (e.g. ``scene.sample_surface``).
        threshold: distance for precision / recall (> 0, world units).
        down_sample: optional voxel size; both clouds are first reduced with
            :func:`voxel_down_sample` (the benchmark's optional step).

    Returns:
        :class:`ReconstructionScores`.  An empty cloud gives inf distances and zero
        precision / recall / F-score, as the benchmark.
    """
    if not float(threshold) > 0:
        raise ValueError(f"threshold: expected > 0, got {threshold}")
    pred, gt = _np(pred_points, "pred_points"), _np(gt_points, "gt_points")
    for name, arr in (("pred_points", pred), ("gt_points", gt)):
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError(f"{name}: expected shape (M, 3), got {arr.shape}")
    if down_sample is not None and down_sample > 0:
        pred, gt = voxel_down_sample(pred, down_sample), voxel_down_sample(gt, down_sample)
    thr = float(threshold)
    if len(pred) == 0 or len(gt) == 0:
        return ReconstructionScores(np.inf, np.inf, np.inf, 0.0, 0.0, 0.0, thr)
    d_pred = nearest_distances(pred, gt)
    d_gt = nearest_distances(gt, pred)
    acc, comp = float(d_pred.mean()), float(d_gt.mean())
    prec, rec = float((d_pred < thr).mean()), float((d_gt < thr).mean())
    f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return ReconstructionScores(acc, comp, (acc + comp) / 2, prec, rec, f, thr)


__all__ = ["ReconstructionScores", "abs_rel", "chamfer_and_fscore", "delta1", "depth_metrics", "depth_scale",
           "pose_auc", "pose_auc_from_errors", "relative_pose_errors"]
