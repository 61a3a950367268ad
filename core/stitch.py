"""Running a predictor over the chunks of a long input and stitching the answers into one frame.

1. **Predict** each chunk (or read it back from the :class:`~.chunks.ChunkCache`), and fit the
   joint to the previous chunk over the views they share (:func:`~.alignment.fit_joint`).
   Only the previous chunk's shared views stay in memory; whole chunks go to the cache.
2. **Loops** (``loop_closure="auto"``, three chunks or more, a predictor with features): views
   that look alike but lie in chunks sharing no view are candidates; each is checked by one
   more pass over a few views around both and accepted or rejected
   (:func:`~.alignment.verify_loop`).
3. **Global alignment**: every joint and accepted loop is an edge of a Sim(3) pose graph over
   the chunks (:func:`~.posegraph.solve_pose_graph`); known poses of some views anchor it.
4. **Assemble**: each chunk, carried by its solved pose, fills the rows of the views it was the
   first to predict.

A run that fits in one pass is step 1 alone, with the prediction used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from . import conventions as conv
from .alignment import Joint, fit_joint, loop_candidates, pose_priors, verify_loop
from .chunks import ChunkCache
from .gaussian_sets import concat_gaussians, select_gaussians, transform_gaussians
from .geometry import apply_sim3_to_w2c, umeyama
from .geometry.robust import Sim3Fit
from .options import ReconstructOptions
from .posegraph import Sim3, chain_poses, solve_pose_graph
from .predictor import ChunkInput, ChunkPrediction, check_prediction
from .reconstruction import GaussianSet

__all__ = ["StitchResult", "known_frame", "stitch"]

LOOP_GROUP = 4
"""Views taken around each side of a loop candidate for its checking pass."""


@dataclass
class StitchResult:
    depth: np.ndarray
    conf: Optional[np.ndarray]
    sky: Optional[np.ndarray]
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    gaussians: Optional[GaussianSet]
    is_metric: bool
    joints: List[Joint] = field(default_factory=list)
    passes: int = 1
    alignment: str = "single pass"
    resumed: int = 0


def _subset(pred: ChunkPrediction, local: np.ndarray) -> ChunkPrediction:
    pick = lambda a: None if a is None else a[local]  # noqa: E731
    return ChunkPrediction(depth=pred.depth[local], extrinsics=pred.extrinsics[local],
                           intrinsics=pred.intrinsics[local], conf=pick(pred.conf), sky=pick(pred.sky),
                           features=pick(pred.features), is_metric=pred.is_metric)


def stitch(predictor, pixels: np.ndarray, chunks: Sequence[range], opts: ReconstructOptions, *,
           cache: Optional[ChunkCache], conditioned: Optional[tuple] = None, known_poses: Optional[np.ndarray] = None,
           report: Callable = lambda *a: None, alloc: Optional[Callable] = None,
           gaussian_sink: Optional[Callable] = None) -> StitchResult:
    """See the module docstring.

    conditioned: ``(extrinsics (N, 4, 4), intrinsics (N, 3, 3))`` when every view has a known
        pose: each chunk is conditioned on its poses and already in their frame (no joints).
    known_poses: (N, 4, 4) with NaN rows for views without a pose: anchors of the graph.
    report: ``report(stage, done, total, message)``.
    alloc: ``alloc(key, shape, dtype)`` makes the (N, h, w) result arrays ("depth", "conf",
        "sky"; default: in memory), e.g. the memory-mapped files of a scene folder being written.
    gaussian_sink: takes each chunk's placed Gaussians (default: joined in memory).
    """
    n, h, w = pixels.shape[:3]
    name = getattr(predictor, "name", type(predictor).__name__)
    joined = predictor.predicts_cameras and conditioned is None and len(chunks) > 1
    metric = bool(getattr(predictor, "is_metric", False))
    want_loops = joined and opts.loop_closure == "auto" and len(chunks) >= 3
    features: Optional[np.ndarray] = None
    joints: List[Joint] = []
    single: Optional[ChunkPrediction] = None
    prev = None  # (views, ChunkPrediction of the previous chunk's views the next chunk shares)
    is_metric = False

    def chunk_input(views: np.ndarray) -> ChunkInput:
        return ChunkInput(pixels=pixels[views], views=views,
                          extrinsics=None if conditioned is None else conditioned[0][views],
                          intrinsics=None if conditioned is None else conditioned[1][views],
                          options=opts, want_features=want_loops)

    def predict(kind: str, views: np.ndarray, store: bool) -> ChunkPrediction:
        pred = cache.get(kind, views) if (cache is not None and store) else None
        if pred is None:
            chunk = chunk_input(views)
            pred = check_prediction(predictor.predict(chunk), chunk, name)
            if cache is not None and store:
                cache.put(kind, views, pred)
        return pred

    def prefetch(kind: str, groups: List[np.ndarray]) -> None:
        """Every pass not yet cached handed at once to a predictor that takes many (a pool of
        workers), each answer cached as it arrives; the joining below then reads them back."""
        many = getattr(predictor, "predict_many", None)
        todo = [v for v in groups if not cache.has(kind, v)] if cache is not None else []
        if many is None or not todo:
            return
        for k, (views, pred) in enumerate(zip(todo, many(chunk_input(v) for v in todo)), 1):
            cache.put(kind, views, check_prediction(pred, chunk_input(views), name))
            workers = getattr(predictor, "workers", None)
            report("workers", k, len(todo), f"{kind} pass {k}/{len(todo)}" + (f" on {workers} workers" if workers else ""))

    report("infer", 0, n, f"{len(chunks)} pass(es)")
    if len(chunks) > 1:
        prefetch("chunk", [np.asarray(rng, np.int64) for rng in chunks])
    for ci, rng in enumerate(chunks):
        views = np.asarray(rng, np.int64)
        pred = predict("chunk", views, store=len(chunks) > 1)
        is_metric = pred.is_metric
        if len(chunks) == 1:
            single = pred
        if want_loops and pred.features is not None:
            if features is None:
                features = np.zeros((n, pred.features.shape[1]), np.float32)
            owned = views >= (chunks[ci - 1][-1] + 1 if ci else 0)
            features[views[owned]] = pred.features[owned]
        if joined and prev is not None:
            shared = np.intersect1d(prev[0], views)
            dst_local = np.searchsorted(prev[0], shared)
            src_local = np.searchsorted(views, shared)
            report("align", ci, len(chunks) - 1, "fitting overlapping chunks")
            fit = fit_joint(prev[1], dst_local, pred, src_local, metric=metric, seed=ci)
            joints.append(Joint(ci - 1, ci, "overlap", tuple(int(v) for v in shared), fit))
        if joined and ci + 1 < len(chunks):
            keep = np.nonzero(views >= chunks[ci + 1][0])[0]
            prev = (views[keep], _subset(pred, keep))
        cached = f", {cache.resumed} read back from {cache.folder}" if cache is not None and cache.resumed else ""
        report("infer", int(views[-1]) + 1, n, f"pass {ci + 1}/{len(chunks)}{cached}")
    prev = None

    # -- global alignment
    if joined:
        edges = [j.edge() for j in joints]
        chain = chain_poses(len(chunks), edges)
        if want_loops and features is not None:
            joints += _close_loops(chunks, features, chain, predict, metric, report, prefetch)
        priors = []
        if known_poses is not None:
            priors = pose_priors(_chunk_centres(chunks, known_poses, predict), metric=metric)
        loops = [j for j in joints if j.kind == "loop" and j.used]
        if loops or priors:
            sol = solve_pose_graph(len(chunks), [j.edge() for j in joints if j.used], priors)
            poses, alignment = sol.poses, (f"pose graph: {len(chunks)} chunks, {len(loops)} loop(s), "
                                           f"{len(priors)} anchor(s), {sol.solver}")
        else:
            poses, alignment = chain, f"sequential: {len(chunks)} chunks"
    else:
        poses = [Sim3.identity()] * len(chunks)
        alignment = "single pass" if len(chunks) == 1 else (
            "each chunk in the given poses' frame" if conditioned is not None else "chunks not joined (no cameras)")

    # -- assemble: cameras first (cheap), then the frame of known poses, then the pixels
    report("assemble", 0, len(chunks), "placing chunks")
    ext = np.zeros((n, 3, 4))
    kk = np.zeros((n, 3, 3))
    owned = []
    for ci, rng in enumerate(chunks):
        views = np.asarray(rng, np.int64)
        own = views >= (chunks[ci - 1][-1] + 1 if ci else 0)
        owned.append((views, own))
        if single is not None:
            e, k = single.extrinsics, single.intrinsics
        else:
            cams = cache.cameras("chunk", views)
            e, k = cams if cams is not None else _cams(predict("chunk", views, store=True))
        ext[views[own]] = _carry(e[own], poses[ci])
        kk[views[own]] = k[own]
    if known_poses is not None:
        g = known_frame(ext, known_poses, metric)
        poses = [g.compose(p) for p in poses]
        ext = _carry(ext, g)
        alignment += "; in the frame of the given poses"
        if opts.align_to_input_ext_scale:
            known = np.isfinite(known_poses).all((1, 2))
            ext[known] = known_poses[known][:, :3, :]
    make = alloc or (lambda key, shape, dtype: np.zeros(shape, dtype))
    depth = make("depth", (n, h, w), np.float32)
    conf = sky = None
    gs_parts: List[GaussianSet] = []
    for ci, (views, own) in enumerate(owned):
        pred = single if single is not None else predict("chunk", views, store=True)
        tgt = views[own]
        T = poses[ci]
        identity = _is_identity(T)
        depth[tgt] = pred.depth[own] if identity else pred.depth[own] * np.float32(T.s)
        if pred.conf is not None:
            conf = make("conf", (n, h, w), np.float32) if conf is None else conf
            conf[tgt] = pred.conf[own]
        if pred.sky is not None:
            sky = make("sky", (n, h, w), bool) if sky is None else sky
            sky[tgt] = pred.sky[own]
        if pred.gaussians is not None:
            part = select_gaussians(pred.gaussians, np.isin(pred.gaussians.view, tgt))
            part = part if identity else transform_gaussians(part, T.r, T.t, T.s)
            if gaussian_sink is not None:
                gaussian_sink(part)
            else:
                gs_parts.append(part)
        report("assemble", ci + 1, len(chunks), "placing chunks")
    gaussians = None
    if gs_parts:
        gaussians = gs_parts[0] if len(gs_parts) == 1 else concat_gaussians(gs_parts)
    return StitchResult(depth=depth, conf=conf, sky=sky, extrinsics=ext, intrinsics=kk, gaussians=gaussians,
                        is_metric=is_metric, joints=joints, passes=len(chunks) + sum(j.kind == "loop" for j in joints),
                        alignment=alignment, resumed=cache.resumed if cache is not None else 0)


def _cams(pred: ChunkPrediction):
    return pred.extrinsics, pred.intrinsics


def _is_identity(t: Sim3) -> bool:
    return bool(np.allclose(t.r, np.eye(3)) and np.allclose(t.t, 0) and t.s == 1.0)


def _carry(w2c: np.ndarray, t: Sim3) -> np.ndarray:
    """World-to-camera poses after the world moves by ``t``."""
    return w2c if _is_identity(t) else apply_sim3_to_w2c(w2c, t.r, t.t, t.s)


def known_frame(ext: np.ndarray, known_w2c: np.ndarray, metric: bool) -> Sim3:
    """The Sim(3) carrying a result into the frame of the views with known poses (NaN rows:
    unknown): a fit of their camera centres (SE(3) for metric results); one posed view fixes
    rotation and translation and leaves the scale."""
    known = np.isfinite(known_w2c).all((1, 2))
    if known.sum() >= 2:
        pred_c, given_c = conv.camera_centers(ext[known]), conv.camera_centers(known_w2c[known])
        r, t, s = umeyama(pred_c, given_c, allow_collinear=known.sum() < 3)
    else:
        m = np.linalg.inv(conv.as_4x4(known_w2c[known][0])) @ conv.as_4x4(ext[known][0])
        r, t, s = m[:3, :3], m[:3, 3], 1.0
    return Sim3(r, t, 1.0 if metric else float(s))


def _owner(chunks: Sequence[range], view: int) -> int:
    """The first chunk holding a view."""
    for ci, rng in enumerate(chunks):
        if rng[0] <= view <= rng[-1]:
            return ci
    raise IndexError(view)


def _group(rng: range, centre: int, size: int) -> np.ndarray:
    start = min(max(rng[0], centre - size // 2), rng[-1] + 1 - size)
    return np.arange(max(start, rng[0]), min(max(start, rng[0]) + size, rng[-1] + 1))


def _close_loops(chunks, features, chain, predict, metric, report, prefetch) -> List[Joint]:
    """Loop candidates, each checked by one more pass: the loop joints, accepted or not."""
    size = len(chunks[0])
    cands = loop_candidates(features, chunks, min_gap=size, neighbour=max(2, size // 4),
                            max_candidates=max(2, len(chunks) // 2))
    out: List[Joint] = []
    group = max(2, min(LOOP_GROUP, size // 2))
    plans = []
    for i, j, sim in cands:
        ca, cb = _owner(chunks, i), _owner(chunks, j)
        ga, gb = _group(chunks[ca], i, group), _group(chunks[cb], j, group)
        plans.append((ca, cb, ga, gb, np.concatenate([ga, gb]), sim))
    prefetch("loop", [p[4] for p in plans])
    for k, (ca, cb, ga, gb, views, sim) in enumerate(plans):
        report("align", k, len(cands), f"checking loop candidate {k + 1}/{len(cands)}")
        pred_a = predict("chunk", np.asarray(chunks[ca], np.int64), store=True)
        pred_b = predict("chunk", np.asarray(chunks[cb], np.int64), store=True)
        loop = predict("loop", views, store=True)
        chained = chain[ca].inverse().compose(chain[cb])  # b's frame into a's
        check = verify_loop(loop, ga, pred_a, ga - chunks[ca][0], gb, pred_b, gb - chunks[cb][0], chained,
                            metric=metric)
        joint = Joint(ca, cb, "loop", tuple(int(v) for v in views), None, used=check.accepted, reason=check.reason,
                      extra={"similarity": sim, "covisibility": check.covisibility})
        if check.rel is not None:
            worst = max(check.fit_a.residual, check.fit_b.residual)
            joint.fit = Sim3Fit(check.rel.r, check.rel.t, check.rel.s, worst,
                                min(check.fit_a.inlier_ratio, check.fit_b.inlier_ratio),
                                check.fit_a.points + check.fit_b.points, 0)
        else:
            joint.used = False
        out.append(joint)
    report("align", len(cands), len(cands), f"{sum(j.used for j in out)} of {len(cands)} loop candidate(s) accepted")
    return out


def _chunk_centres(chunks, known_poses, predict) -> dict:
    """{chunk: (predicted centres, given centres)} of the posed views each chunk owns."""
    known = np.isfinite(known_poses).all((1, 2))
    out = {}
    for ci, rng in enumerate(chunks):
        views = np.asarray(rng, np.int64)
        posed = known[views]
        if posed.sum() < 3:
            continue
        pred = predict("chunk", views, store=True)
        out[ci] = (conv.camera_centers(pred.extrinsics[posed]), conv.camera_centers(known_poses[views[posed]]))
    return out
