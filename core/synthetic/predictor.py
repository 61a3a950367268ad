"""A ground-truth predictor with controllable, seeded errors, for measuring drift.

:class:`GroundTruthPredictor` implements the :class:`~core.predictor.Predictor` protocol from
the true cameras and depth of a sequence (e.g. :func:`.trajectories.make_long_scene`): it
answers each chunk with the truth in the chunk's own frame, normalised as DA3 normalises,
plus an error that grows along the chunk, so that joining chunks by their overlaps drifts
the way a real model's chunks do.  Its per-view features are computed from the pixels
(:func:`image_features`), like a real retrieval descriptor, for loop detection.

    scene, ext, ks, images, depth = make_long_scene("loop", 240)
    predictor = GroundTruthPredictor.from_scene(scene, rotation_deg=0.5, scale=0.02, seed=0)
    pred = predictor.predict(ChunkInput(pixels=images[:24], views=np.arange(24), want_features=True))

**The chunk frame.**  The chunk's first view is at the identity; translations and depth are
divided by the median distance of the chunk's cameras to the first one (DA3's normalisation;
1 when they all coincide, and no division when ``is_metric``).

**The error.**  Each chunk draws one Sim(3) error ``xi`` = (rotation vector, log scale,
translation) from a generator seeded by ``(seed, the chunk's views)``, so the same chunk
always gets the same error (reruns, resumed runs) and any composition of views (a
loop-closure pass over two separate stretches) is deterministic.  The magnitudes are exact,
the directions random:

* rotation: ``rotation_deg`` degrees about a uniformly random axis;
* scale: log scale ``+-scale`` (random sign; 0.02 is a 2 % scale error);
* translation: ``translation`` times the chunk's scene scale (the median true depth of its
  first view, in the chunk's units) along a uniformly random direction.

View k of a chunk of n gets the fraction ``a = k / (n - 1)`` of it: the Sim(3)
``X -> exp(a log_scale) Exp(a rotation) X + a translation`` of the chunk frame (the first view
exact, the last one carrying the whole of ``xi``).  It moves the view's camera *and* scales
its depth by the same factor, so each view's points move rigidly with its pose.  The views
of one chunk are therefore no longer related by one Sim(3): a fit over the views two chunks
share cannot undo the error, and joined chunks drift.  ``depth_noise`` adds independent
per-pixel relative noise (``depth *= 1 + depth_noise * N(0, 1)``, seeded the same way).

**Conditioned chunks** (``chunk.extrinsics`` given) get the given poses back unchanged and
the true depth scaled by the scale of the Sim(3) (Umeyama) fit of the true camera centres to
the given ones (1 when the given centres are fewer than two distinct points), with no error
at all: a conditioned model is assumed to honour its poses.

Confidence: the ``conf`` given at construction (an array or a function of the view), else
``1 + 1 / (1 + (noise / depth_noise)^2)``: 2 where the depth is exact, towards 1 where the
noise drawn for the pixel is large, 1 where the true depth is invalid (<= 0, which is also
returned as ``sky``).  Intrinsics are always the true ones.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import numpy as np

from .. import conventions as conv
from ..predictor import ChunkInput, ChunkPrediction
from ..quaternions import quat_wxyz_to_matrix

ArrayOrViewFn = Union[np.ndarray, Callable[[int], np.ndarray]]

FEATURE_GRID = (12, 16)
"""(rows, cols) of the thumbnail :func:`image_features` compares."""
FEATURE_COLOUR_WEIGHT = 0.5
"""Weight of the colour part of :func:`image_features` against the grey part (1)."""


# --------------------------------------------------------------------------- features


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an area (box) resampling along one axis: output cell o averages
    the input cells it covers, each by the fraction it covers (OpenCV's INTER_AREA)."""
    edges = np.linspace(0.0, float(n_in), n_out + 1)
    start = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.minimum(edges[1:, None], start + 1) - np.maximum(edges[:-1, None], start)
    a = np.clip(overlap, 0.0, None)
    return a / a.sum(1, keepdims=True)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def image_features(pixels: np.ndarray, grid: Tuple[int, int] = FEATURE_GRID,
                   colour_weight: float = FEATURE_COLOUR_WEIGHT) -> np.ndarray:
    """(n, d) float32 unit-norm global descriptors of (n, h, w, 3) uint8 images, computed from
    the pixels only: compare them by cosine similarity (a dot product).

    Each image is area-averaged to a ``grid`` thumbnail (12 x 16; OpenCV's INTER_AREA, in
    numpy); the descriptor is the thumbnail's grey level (Rec. 601 luma) with its mean removed,
    scaled to unit norm, followed by its colour (each channel minus the pixel's grey mean,
    then the mean removed and scaled to unit norm) weighted by ``colour_weight``; the whole is
    unit norm.  d = rows * cols * 4 (768).  Views of the same place score near 1 (0.99 for
    the first and last view of a 240-view loop), different places of the same room well
    below (<= 0.45 at least 48 views apart on that loop).
    """
    px = np.asarray(pixels)
    if px.ndim != 4 or px.shape[-1] != 3:
        raise ValueError(f"pixels: expected shape (n, h, w, 3), got {px.shape}")
    n, h, w, _ = px.shape
    gh, gw = int(grid[0]), int(grid[1])
    ah, aw = _area_matrix(h, gh), _area_matrix(w, gw)
    small = np.einsum("oh,nhwc,pw->nopc", ah, px.astype(np.float64) / 255.0, aw, optimize=True)  # (n, gh, gw, 3)
    grey = _unit_rows((small @ np.array([0.299, 0.587, 0.114])).reshape(n, -1))
    colour = _unit_rows((small - small.mean(-1, keepdims=True)).reshape(n, -1))
    out = np.concatenate([grey, float(colour_weight) * colour], 1)
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------- Sim(3) pieces


def _rotation(rotvec: np.ndarray) -> np.ndarray:
    """(3, 3) rotation of a rotation vector (axis times angle in radians)."""
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-15:
        return np.eye(3)
    axis = np.asarray(rotvec, np.float64) / angle
    return quat_wxyz_to_matrix(np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * axis]))


def _sim3_pose(w2c: np.ndarray, r: np.ndarray, t: np.ndarray, s: float) -> np.ndarray:
    """(4, 4) pose of a camera after the world moves by X -> s R X + t (its depth scales by s)."""
    c2w = conv.w2c_to_c2w(w2c)
    c2w[:3, :3] = r @ c2w[:3, :3]
    c2w[:3, 3] = s * (r @ c2w[:3, 3]) + t
    return conv.as_4x4(conv.c2w_to_w2c(c2w))


def _fit_scale(src: np.ndarray, dst: np.ndarray) -> float:
    """Scale of the Sim(3) (Umeyama) fit of centres ``src`` to ``dst``; 1 when degenerate."""
    if len(src) < 2 or np.ptp(dst, axis=0).max() <= 1e-12 or np.ptp(src, axis=0).max() <= 1e-12:
        return 1.0
    from ..geometry import umeyama_sim3

    try:
        _, _, s = umeyama_sim3(src, dst, allow_collinear=True)
    except ValueError:
        return 1.0
    return float(s)


# --------------------------------------------------------------------------- the predictor


class GroundTruthPredictor:
    """The truth, chunk by chunk, with seeded errors (see the module docstring).

    Args:
        extrinsics: (N, 3|4, 4) true world-to-camera poses of every view.
        intrinsics: (N, 3, 3) true intrinsics for the processed image size.
        depth: (N, h, w) true z-depth (<= 0: invalid), or a function ``view -> (h, w)`` that
            keeps memory bounded on long inputs (only a chunk's views are looked up).
        rotation_deg: rotation error of a chunk's last view against its first, in degrees.
        scale: log-scale error of a chunk's last view (0.02: 2 %).
        translation: translation error of a chunk's last view, in units of the chunk's scene
            scale (the median true depth of its first view).
        seed: with the chunk's view indices, seeds every error (non-negative integer).
        depth_noise: relative per-pixel depth noise (standard deviation).
        conf: (N, h, w) confidence or a function ``view -> (h, w)``; None: see the module
            docstring.
        is_metric: declare depth and translations metric; the chunks are then not normalised.
        systematic: every chunk gets the same error (drawn from ``seed`` alone), a bias such
            as a network's consistent scale shrink: joined chunks then drift linearly instead
            of as a random walk.
        name: recorded in the scene file.
    """

    predicts_cameras = True
    has_gaussians = False

    def __init__(self, extrinsics: np.ndarray, intrinsics: np.ndarray, depth: ArrayOrViewFn, *,
                 rotation_deg: float = 0.0, scale: float = 0.0, translation: float = 0.0, seed: int = 0,
                 depth_noise: float = 0.0, conf: Optional[ArrayOrViewFn] = None, is_metric: bool = False,
                 systematic: bool = False, name: str = "ground-truth") -> None:
        ext = np.asarray(extrinsics, np.float64)
        if ext.ndim != 3 or ext.shape[1:] not in ((3, 4), (4, 4)):
            raise ValueError(f"extrinsics: expected shape (N, 3|4, 4), got {ext.shape}")
        self.extrinsics = conv.as_4x4(ext)
        self.intrinsics = np.asarray(intrinsics, np.float64)
        n = len(self.extrinsics)
        if self.intrinsics.shape != (n, 3, 3):
            raise ValueError(f"intrinsics: expected shape ({n}, 3, 3), got {self.intrinsics.shape}")
        for what, value in (("depth", depth), ("conf", conf)):
            if value is not None and not callable(value) and (np.ndim(value) != 3 or len(value) != n):
                raise ValueError(f"{what}: expected shape ({n}, h, w) or a function of the view, "
                                 f"got {np.shape(value)}")
        for what, value in (("rotation_deg", rotation_deg), ("scale", scale), ("translation", translation),
                            ("depth_noise", depth_noise)):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"{what}: expected a finite number >= 0, got {value!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
        self._depth = depth
        self._conf = conf
        self.rotation_deg = float(rotation_deg)
        self.scale = float(scale)
        self.translation = float(translation)
        self.seed = int(seed)
        self.depth_noise = float(depth_noise)
        self.is_metric = bool(is_metric)
        self.systematic = bool(systematic)
        self.name = name

    @classmethod
    def from_scene(cls, scene, **errors) -> "GroundTruthPredictor":
        """The predictor of a :class:`~.scene.SyntheticScene`'s views (its cameras and depth);
        keywords as for the constructor."""
        return cls(scene.extrinsics, scene.intrinsics, scene.depth, **errors)

    def __len__(self) -> int:
        return len(self.extrinsics)

    def __repr__(self) -> str:
        return (f"GroundTruthPredictor({len(self)} views, rotation_deg={self.rotation_deg}, scale={self.scale}, "
                f"translation={self.translation}, depth_noise={self.depth_noise}, seed={self.seed})")

    # ----------------------------------------------------------------------- the truth

    def _lookup(self, source: ArrayOrViewFn, view: int) -> np.ndarray:
        return np.asarray(source(view) if callable(source) else source[view], np.float64)

    def true_depth(self, views: np.ndarray) -> np.ndarray:
        """(n, h, w) float64 true depth of ``views``."""
        return np.stack([self._lookup(self._depth, int(v)) for v in views])

    def _views(self, chunk: ChunkInput) -> np.ndarray:
        views = np.asarray(chunk.views).astype(np.int64).reshape(-1)
        if len(views) != len(chunk) or len(views) == 0:
            raise ValueError(f"chunk.views: expected {len(chunk)} view indices, got {len(views)}")
        if views.min() < 0 or views.max() >= len(self):
            raise ValueError(f"chunk.views: indices must lie in [0, {len(self)}), got {views.min()}..{views.max()}")
        return views

    def _rng(self, views: np.ndarray) -> np.random.Generator:
        return np.random.default_rng([self.seed, len(views), *(int(v) for v in views)])

    def chunk_error(self, views) -> Tuple[np.ndarray, float, np.ndarray]:
        """The error ``xi`` of the chunk of these views: (rotation vector (3,) in radians,
        log scale, translation (3,) in units of the chunk's scene scale) -- what its last view
        carries; view k of n carries the fraction k / (n - 1)."""
        return self._draw_error(self._rng(np.asarray(views, np.int64).reshape(-1)))

    def _draw_error(self, rng: np.random.Generator) -> Tuple[np.ndarray, float, np.ndarray]:
        if self.systematic:  # one bias for every chunk (drawn from the seed alone): drift grows linearly
            rng = np.random.default_rng([self.seed, 7919])
        axis, sign, direction = rng.normal(size=3), (1.0 if rng.random() < 0.5 else -1.0), rng.normal(size=3)
        rotvec = math.radians(self.rotation_deg) * axis / np.linalg.norm(axis)
        return rotvec, float(sign * self.scale), self.translation * direction / np.linalg.norm(direction)

    # ----------------------------------------------------------------------- predict

    def predict(self, chunk: ChunkInput) -> ChunkPrediction:
        """The chunk's truth in its own frame with its error (or in the given poses' frame,
        without error, when ``chunk.extrinsics`` is given); see the module docstring."""
        views = self._views(chunk)
        n, h, w = chunk.pixels.shape[:3]
        depth = self.true_depth(views)
        if depth.shape[1:] != (h, w):
            raise ValueError(f"{self.name}: the true depth is {depth.shape[1]} x {depth.shape[2]}, the chunk's "
                             f"images {h} x {w}: build the predictor for the processed size")
        valid = np.isfinite(depth) & (depth > 0)
        depth = np.where(valid, depth, 0.0)
        true_w2c = self.extrinsics[views]
        noise = np.zeros_like(depth)
        if chunk.extrinsics is not None:
            given = conv.as_4x4(np.asarray(chunk.extrinsics, np.float64))
            if given.shape != (n, 4, 4):
                raise ValueError(f"chunk.extrinsics: expected shape ({n}, 3|4, 4), got {given.shape}")
            depth = depth * _fit_scale(conv.camera_centers(true_w2c), conv.camera_centers(given))
            w2c = given
        else:
            w2c, depth, noise = self._chunk_frame(views, true_w2c, depth, valid)
        conf = self._confidence(views, noise, valid)
        features = image_features(chunk.pixels) if chunk.want_features else None
        return ChunkPrediction(depth=depth.astype(np.float32), extrinsics=w2c[:, :3, :].copy(),
                               intrinsics=self.intrinsics[views].copy(), conf=conf,
                               sky=None if valid.all() else ~valid, features=features, is_metric=self.is_metric)

    def _chunk_frame(self, views: np.ndarray, true_w2c: np.ndarray, depth: np.ndarray, valid: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(poses (n, 4, 4), depth, relative noise) in the normalised chunk frame, with the error."""
        n = len(views)
        rel = true_w2c @ conv.w2c_to_c2w(true_w2c[0])  # the first view at the identity
        unit = 1.0
        if not self.is_metric and n > 1:
            dist = np.linalg.norm(conv.camera_centers(rel)[1:], axis=1)
            if np.median(dist) > 1e-12:
                unit = float(np.median(dist))
        rel[:, :3, 3] /= unit
        depth = depth / unit
        rng = self._rng(views)
        rotvec, log_scale, translation = self._draw_error(rng)  # = self.chunk_error(views)
        first = depth[0][valid[0]]
        scene_scale = float(np.median(first)) if first.size else 1.0
        noise = rng.normal(size=depth.shape) * self.depth_noise if self.depth_noise > 0 else np.zeros_like(depth)
        out = np.empty_like(rel)
        for k in range(n):
            a = k / (n - 1) if n > 1 else 0.0
            s = math.exp(a * log_scale)
            out[k] = _sim3_pose(rel[k], _rotation(a * rotvec), a * scene_scale * translation, s)
            depth[k] *= s
        depth = np.where(valid, depth * np.clip(1.0 + noise, 1e-3, None), 0.0)
        return out, depth, noise

    def _confidence(self, views: np.ndarray, noise: np.ndarray, valid: np.ndarray) -> np.ndarray:
        if self._conf is not None:
            return np.stack([self._lookup(self._conf, int(v)) for v in views]).astype(np.float32)
        if self.depth_noise > 0:
            conf = 1.0 + 1.0 / (1.0 + (noise / self.depth_noise) ** 2)
        else:
            conf = np.full(noise.shape, 2.0)
        return np.where(valid, conf, 1.0).astype(np.float32)


__all__ = ["GroundTruthPredictor", "image_features", "FEATURE_GRID", "FEATURE_COLOUR_WEIGHT"]
