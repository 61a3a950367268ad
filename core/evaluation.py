"""Evaluating a model on held-out scenes with exact ground truth, next to trivial baselines.

Metrics (all views of a scene together; then the mean over scenes):

* pose AUC@3 and AUC@30 of the relative poses of every view pair (the official benchmark's
  :func:`~da3_plugins.core.geometry.pose_auc`; scale- and frame-free);
* depth AbsRel and delta1 after one median scale per scene (DA3's depth is relative);
* Chamfer distance and F-score of the point cloud (every valid pixel, unprojected with the
  predicted depth and cameras) after a Sim(3) fit to the true points of the same pixels,
  both divided by / measured at a fraction of the scene's median true depth, so that scenes
  of any size weigh the same: Chamfer is reported in units of the median depth and the
  F-score threshold is ``fscore_threshold`` (default 5%) of it.

Baselines go through exactly the same scoring: ``identity`` (every camera at the first
one's pose, the true intrinsics, and a constant depth) and ``random`` (the same
architecture with untrained weights).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .geometry import chamfer_and_fscore, depth_metrics, depth_to_world_points, pose_auc, umeyama_sim3

METRICS = ("auc03", "auc30", "abs_rel", "delta1", "chamfer", "fscore")
#: True when a larger value is better.
HIGHER_IS_BETTER = {"auc03": True, "auc30": True, "abs_rel": False, "delta1": True, "chamfer": False, "fscore": True}


@dataclass
class EvalScores:
    """Scores of one method, averaged over scenes (AUC, delta1, F-score as fractions)."""

    auc03: float
    auc30: float
    abs_rel: float
    delta1: float
    chamfer: float
    fscore: float
    scenes: int = 1

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


@dataclass
class EvalTable:
    """Rows of :class:`EvalScores` by method name, in insertion order."""

    rows: Dict[str, EvalScores] = field(default_factory=dict)
    views: int = 0

    def format(self) -> str:
        """A Markdown table (AUC, delta1 and F-score in percent)."""
        head = "| method | AUC@3 ↑ | AUC@30 ↑ | AbsRel ↓ | δ1 ↑ | Chamfer ↓ | F-score ↑ |"
        lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
        for name, s in self.rows.items():
            lines.append(f"| {name} | {100 * s.auc03:.1f} | {100 * s.auc30:.1f} | {s.abs_rel:.3f} | "
                         f"{100 * s.delta1:.1f} | {s.chamfer:.3f} | {100 * s.fscore:.1f} |")
        return "\n".join(lines)

    def beats(self, method: str, baseline: str) -> Dict[str, bool]:
        """Per metric: does ``method`` score strictly better than ``baseline``?"""
        a, b = self.rows[method].as_dict(), self.rows[baseline].as_dict()
        return {m: (a[m] > b[m]) if HIGHER_IS_BETTER[m] else (a[m] < b[m]) for m in METRICS}

    def to_json(self) -> dict:
        return {"views": self.views, "rows": {k: v.as_dict() for k, v in self.rows.items()}}


def score_scene(depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray, gt_depth: np.ndarray,
                gt_extrinsics: np.ndarray, gt_intrinsics: np.ndarray, *, fscore_threshold: float = 0.05,
                max_points: int = 20000, seed: int = 0) -> EvalScores:
    """Score one scene's prediction (depth (N, H, W), w2c (N, 3|4, 4), K (N, 3, 3)) against
    the truth at the same size."""
    if depth.shape != gt_depth.shape:
        raise ValueError(f"depth: predicted shape {depth.shape} differs from the ground truth {gt_depth.shape}")
    valid = gt_depth > 0
    auc = pose_auc(extrinsics[:, :3], gt_extrinsics[:, :3], thresholds=(3, 30))
    dm = depth_metrics(depth, gt_depth, valid, align="median")
    pred_pts = depth_to_world_points(depth, intrinsics, extrinsics[:, :3])[valid]
    gt_pts = depth_to_world_points(gt_depth, gt_intrinsics, gt_extrinsics[:, :3])[valid]
    rng = np.random.default_rng(seed)
    if len(gt_pts) > max_points:
        pick = rng.choice(len(gt_pts), max_points, replace=False)
        pred_pts, gt_pts = pred_pts[pick], gt_pts[pick]
    unit = float(np.median(gt_depth[valid]))
    try:
        r, t, s = umeyama_sim3(pred_pts, gt_pts)
        aligned = s * pred_pts @ r.T + t
    except ValueError:  # a degenerate prediction (e.g. everything on one point)
        aligned = np.broadcast_to(gt_pts.mean(0), gt_pts.shape)
    sc = chamfer_and_fscore(aligned, gt_pts, threshold=fscore_threshold * unit)
    return EvalScores(auc03=auc["auc03"], auc30=auc["auc30"], abs_rel=dm["abs_rel"], delta1=dm["delta1"],
                      chamfer=sc.chamfer / unit, fscore=sc.fscore)


def mean_scores(scores: Sequence[EvalScores]) -> EvalScores:
    return EvalScores(**{m: float(np.mean([getattr(s, m) for s in scores])) for m in METRICS}, scenes=len(scores))


def heldout_scenes(count: int = 24, views: int = 4, height: int = 126, width: int = 168, seed: int = 1000):
    """Held-out synthetic scenes (a pool seed the training default never uses), as
    :class:`~da3_plugins.core.training.Batch`-like samples with images, depth and cameras."""
    from .training import SyntheticData, SyntheticDataConfig

    cfg = SyntheticDataConfig(height=height, width=width, scenes=count, views_per_scene=views, min_views=min(2, views),
                              max_views=views, seed=seed)
    data = SyntheticData(cfg)
    return [data.scene(i) for i in range(count)]


FAMILIES = ("rooms", "randomized", "terrain", "shapes")
"""Held-out scene families: ``rooms`` (the rooms generator, pool seed 1000), ``randomized``
(the domain-randomised training generator at seeds its pool does not draw), ``terrain`` and
``shapes`` (evaluation-only generators, :mod:`~da3_plugins.core.synthetic.heldout`: scenes no
training data source produces)."""

FAMILY_SEEDS = {"rooms": 1000, "randomized": 1000, "terrain": 2000, "shapes": 3000}
"""The default first seed of each family's held-out scenes."""


def family_scenes(family: str, count: int = 8, views: int = 4, height: int = 126, width: int = 168,
                  seed: Optional[int] = None) -> list:
    """``count`` held-out scenes of ``family`` (see :data:`FAMILIES`) with ``views`` views at
    ``height`` x ``width``; ``seed`` defaults to the family's :data:`FAMILY_SEEDS` entry."""
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {', '.join(FAMILIES)}, got {family!r}")
    seed = FAMILY_SEEDS[family] if seed is None else seed
    if family == "rooms":
        return heldout_scenes(count, views=views, height=height, width=width, seed=seed)
    if family == "randomized":
        from .synthetic.randomized import make_randomized_scene

        # the training pool draws 31-bit seeds at random; these small ones are held out
        return [make_randomized_scene(seed + i, views, height, width) for i in range(count)]
    from .synthetic.heldout import heldout_family

    return heldout_family(family, count=count, views=views, height=height, width=width, seed=seed)


def family_table(results: Sequence[tuple]) -> str:
    """One Markdown table of ``(family, size label, EvalTable)`` entries: a row per method."""
    lines = ["| family | size | method | AUC@3 ↑ | AUC@30 ↑ | AbsRel ↓ | δ1 ↑ | Chamfer ↓ | F-score ↑ |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for family, size, table in results:
        for name, s in table.rows.items():
            lines.append(f"| {family} | {size} | {name} | {100 * s.auc03:.1f} | {100 * s.auc30:.1f} | {s.abs_rel:.3f} | "
                         f"{100 * s.delta1:.1f} | {s.chamfer:.3f} | {100 * s.fscore:.1f} |")
    return "\n".join(lines)


@dataclass
class SurfaceError:
    """How far fused points lie from a scene's true surface (see :func:`fused_surface_error`)."""

    median: float  # median distance, scene units
    extent: float  # the scene's bounding-box diagonal, scene units
    points: int  # fused points measured
    scale: float  # the Sim(3) scale from the prediction's frame to the scene's

    @property
    def fraction(self) -> float:
        """The median distance as a fraction of the scene's extent."""
        return self.median / self.extent


def fused_surface_error(depth: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray, valid: np.ndarray,
                        scene, max_points: int = 200000, seed: int = 0) -> SurfaceError:
    """The median distance of fused points to ``scene``'s true surface, measured with the true
    cameras: every valid pixel of every view (depth (N, H, W), K, predicted w2c) is unprojected
    into the prediction's frame, which a Sim(3) fitted from the predicted camera centres to the
    true ones (``scene.extrinsics``) brings into the scene's frame; then the exact distance to
    the surface (``scene.distance_to_surface``) over ``scene.extent``.  Views whose point clouds
    do not line up, or depth of the wrong shape, show as a large figure; needs 3 or more
    cameras not on one line.  ``max_points``: a seeded sample of that many points at most."""
    from .conventions import w2c_to_c2w

    pts = depth_to_world_points(np.asarray(depth, np.float64), np.asarray(intrinsics, np.float64),
                                np.asarray(extrinsics, np.float64)[:, :3])[np.asarray(valid, bool)]
    if len(pts) == 0:
        raise ValueError("valid: no valid pixel to measure")
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    pred_c = w2c_to_c2w(np.asarray(extrinsics, np.float64)[:, :3])[:, :3, 3]
    true_c = w2c_to_c2w(np.asarray(scene.extrinsics, np.float64)[:, :3])[:, :3, 3]
    r, t, s = umeyama_sim3(pred_c, true_c)
    dist = scene.distance_to_surface(s * pts @ r.T + t)
    return SurfaceError(median=float(np.median(dist)), extent=float(scene.extent), points=int(len(pts)), scale=float(s))


def predict(model, images: np.ndarray, process_res: Optional[int] = None):
    """Run ``model`` on (N, H, W, 3) uint8 -> (depth, w2c, K) at the input size."""
    n, h, w = images.shape[:3]
    rec = model.reconstruct(list(images), process_res=process_res or max(h, w), process_res_method="upper_bound_resize",
                            seed=0)
    if rec.depth.shape[1:] != (h, w):
        raise ValueError(f"evaluation needs images whose sides are multiples of 14 (got {h}x{w})")
    return rec.depth, rec.extrinsics, rec.intrinsics


def evaluate(model, scenes, *, baselines: bool = True, random_baseline: bool = True,
             progress: Optional[Callable[[int, int], None]] = None, name: Optional[str] = None) -> EvalTable:
    """Score ``model`` (a :class:`~da3_plugins.core.model.DA3Model`) on ``scenes`` (objects with
    images, depth, extrinsics and intrinsics), plus the baselines."""
    from .model.da3model import random_model

    methods: Dict[str, Callable] = {name or model.preset: lambda s: predict(model, s.images)}
    if random_baseline and model.predicts_cameras:
        rnd = random_model(model.config, seed=12345)
        methods[f"{model.preset}, untrained (random weights)"] = lambda s: predict(rnd, s.images)
    if baselines:
        def identity(s):
            n = len(s.images)
            ext = np.tile(np.eye(4)[:3], (n, 1, 1))
            return np.ones(s.depth.shape, np.float32), ext, np.asarray(s.intrinsics, np.float64)

        methods["identity poses + constant depth"] = identity
    scores: Dict[str, List[EvalScores]] = {k: [] for k in methods}
    total = len(scenes) * len(methods)
    done = 0
    for scene in scenes:
        gt = (np.asarray(scene.depth, np.float64), np.asarray(scene.extrinsics, np.float64),
              np.asarray(scene.intrinsics, np.float64))
        for key, fn in methods.items():
            d, e, k = fn(scene)
            scores[key].append(score_scene(np.asarray(d, np.float64), np.asarray(e, np.float64),
                                           np.asarray(k, np.float64), *gt))
            done += 1
            if progress is not None:
                progress(done, total)
    views = len(scenes[0].images) if len(scenes) else 0
    return EvalTable(rows={k: mean_scores(v) for k, v in scores.items()}, views=views)


__all__ = ["METRICS", "EvalScores", "EvalTable", "score_scene", "mean_scores", "heldout_scenes", "FAMILIES",
           "FAMILY_SEEDS", "family_scenes", "family_table", "SurfaceError", "fused_surface_error", "predict",
           "evaluate"]
