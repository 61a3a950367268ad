"""The predictor protocol: what :func:`~.pipeline.reconstruct` needs from a model.

``reconstruct`` splits the views into chunks, hands each chunk's processed images to a
*predictor* and joins the answers (overlaps, loop closures, a global pose graph).  Anything
that implements :class:`Predictor` can be plugged in and keeps every export and adapter; the
DA3 model is one such object (:class:`DA3Predictor`), and :mod:`.synthetic` provides a
ground-truth predictor with controllable, seeded errors for tests and benchmarks.

A predictor answers one chunk at a time::

    class MyPredictor:
        name = "my-model"            # recorded in the scene file
        predicts_cameras = True      # False: depth only (monocular); reconstruct places views at the origin
        has_gaussians = False        # True: predict() may return Gaussians when asked
        is_metric = False            # True: depth and translations in metres (joints are then SE(3))

        def predict(self, chunk: ChunkInput) -> ChunkPrediction: ...

        # optional: many passes at once, answered in order (e.g. on several workers); when a
        # predictor has it, a long input's passes are all handed over before they are joined
        def predict_many(self, chunks: Iterable[ChunkInput]) -> Iterator[ChunkPrediction]: ...

Passes are independent of each other and of their order (DA3 seeds each pass on its own), which
is what lets :class:`PooledPredictor` send them to a pool of workers (``da3p reconstruct --ray``)
and still give the serial result.

Frames: a prediction is in the chunk's own frame (any Sim(3) frame; DA3 puts its first view at
the origin).  When ``chunk.extrinsics`` is given the predictor is *conditioned* on those poses
and its answer should be in their frame (DA3 aligns its prediction to them); ``reconstruct``
checks nothing more than shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Protocol, runtime_checkable

import numpy as np

from .options import ReconstructOptions
from .reconstruction import GaussianSet, Reconstruction

__all__ = ["ChunkInput", "ChunkPrediction", "ChunkPool", "PooledPredictor", "Predictor", "default_intrinsics",
           "check_prediction"]


@dataclass(frozen=True)
class ChunkInput:
    """One chunk to predict.

    pixels: (n, h, w, 3) uint8 processed images (RGB), in view order.
    views: (n,) int64 global indices of these views in the whole input (the ground-truth
        predictor uses them; a network ignores them).
    extrinsics: (n, 4, 4) float64 world-to-camera poses to condition on, or None.
    intrinsics: (n, 3, 3) float64 intrinsics of the processed images, or None.
    options: the run's options (``infer_gs``, ``use_ray_pose``, ``ref_view_strategy``, ...).
    want_features: whether loop detection needs per-view features from this chunk.
    """

    pixels: np.ndarray
    views: np.ndarray
    extrinsics: Optional[np.ndarray] = None
    intrinsics: Optional[np.ndarray] = None
    options: ReconstructOptions = ReconstructOptions()
    want_features: bool = False

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class ChunkPrediction:
    """A predictor's answer for one chunk, in the chunk's frame.

    depth: (n, h, w) float32 z-depth; conf: (n, h, w) float32 or None (higher is better);
    extrinsics: (n, 3, 4) float64 world-to-camera (OpenCV); intrinsics: (n, 3, 3) float64;
    sky: (n, h, w) bool or None; gaussians: a :class:`GaussianSet` whose ``view`` holds the
    global view indices, or None; features: (n, d) float32 per-view descriptors for loop
    detection (compared by cosine similarity), or None (no loop closure then);
    is_metric: depth and translations in metres.
    """

    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    conf: Optional[np.ndarray] = None
    sky: Optional[np.ndarray] = None
    gaussians: Optional[GaussianSet] = None
    features: Optional[np.ndarray] = None
    is_metric: bool = False


@runtime_checkable
class Predictor(Protocol):
    """What :func:`~.pipeline.reconstruct` calls: see the module docstring."""

    name: str
    predicts_cameras: bool
    has_gaussians: bool
    is_metric: bool

    def predict(self, chunk: ChunkInput) -> ChunkPrediction: ...


class ChunkPool(Protocol):
    """Workers that answer passes elsewhere (each holding the same model), in order."""

    def predict_many(self, chunks: Iterable[ChunkInput]) -> Iterator[ChunkPrediction]: ...


class PooledPredictor:
    """A predictor whose passes run in a :class:`ChunkPool`; its description (name, what it
    predicts) is the ``local`` predictor's, which describes the same model."""

    def __init__(self, local: Predictor, pool: ChunkPool) -> None:
        self.local = local
        self.pool = pool
        self.name = local.name
        self.predicts_cameras = local.predicts_cameras
        self.has_gaussians = local.has_gaussians
        self.is_metric = local.is_metric
        self.workers = getattr(pool, "workers", None)

    def predict(self, chunk: ChunkInput) -> ChunkPrediction:
        return next(iter(self.pool.predict_many([chunk])))

    def predict_many(self, chunks: Iterable[ChunkInput]) -> Iterator[ChunkPrediction]:
        return self.pool.predict_many(chunks)


def default_intrinsics(n: int, h: int, w: int) -> np.ndarray:
    """Cameras for predictors that predict none: 60 degrees across the longer side, centred."""
    f = max(h, w) / (2.0 * math.tan(math.radians(30.0)))
    k = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    return np.tile(k, (n, 1, 1))


def check_prediction(pred: ChunkPrediction, chunk: ChunkInput, name: str) -> ChunkPrediction:
    """Shapes and dtypes of a predictor's answer, normalised (by the checks of
    :class:`Reconstruction`); a mismatch is a ValueError naming the predictor and the array."""
    n = chunk.pixels.shape[0]
    try:
        rec = Reconstruction(images=np.asarray(chunk.pixels), depth=pred.depth, extrinsics=pred.extrinsics,
                             intrinsics=pred.intrinsics, conf=pred.conf, sky=pred.sky)
    except ValueError as exc:
        raise ValueError(f"predictor {name}: {exc}") from None
    pred.depth, pred.extrinsics, pred.intrinsics, pred.conf, pred.sky = (
        rec.depth, rec.extrinsics, rec.intrinsics, rec.conf, rec.sky)
    if pred.features is not None:
        f = np.asarray(pred.features, np.float32)
        if f.ndim != 2 or f.shape[0] != n:
            raise ValueError(f"predictor {name}: features has shape {f.shape}, expected ({n}, d)")
        pred.features = f
    return pred
