"""Training data sources (the data-manager layer): batches of views with depth and cameras.

* :class:`SyntheticData`: a lazily rendered pool of synthetic scenes
  (:mod:`~da3_plugins.core.synthetic`), sampled as set by :class:`~.config.SyntheticDataConfig`;
* :class:`RandomizedData`: domain-randomised scenes, each batch at a random size of
  ``sizes`` under a patch-token budget (``generator="randomized"``);
* :class:`FolderData`: the user's scenes (:class:`~da3_plugins.core.datasets.FolderDataset`),
  fitted to the training size (:func:`fit_views`), with optional teacher-student pseudo-labels
  (:func:`pseudo_label_depth`).

Both offer ``batch(rng, batch_size, rank=0, world_size=1) -> Batch``; every random choice comes
from ``rng``.  Under data-parallel training each of ``world_size`` processes asks for its
``batch_size`` samples: the plan (which scene, which views) is drawn for the whole global batch
of ``batch_size * world_size`` samples, so that every process consumes ``rng`` alike, and
process ``rank`` loads only samples ``rank * batch_size`` .. ``(rank + 1) * batch_size - 1``.
One process with a batch of 4 gets the same 4 samples as 2 processes with batches of 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import losses as L
from ..model.config import PATCH_SIZE
from .config import SyntheticDataConfig


@dataclass
class Batch:
    """B samples of N views each, at one size (numpy, as the data sources give them)."""

    images: np.ndarray  # (B, N, H, W, 3) uint8
    depth: np.ndarray  # (B, N, H, W) float32, 0 = unknown
    extrinsics: np.ndarray  # (B, N, 3, 4) OpenCV world-to-camera
    intrinsics: np.ndarray  # (B, N, 3, 3) pixels


class SyntheticData:
    """A lazily rendered pool of synthetic scenes (see :class:`SyntheticDataConfig`)."""

    def __init__(self, config: SyntheticDataConfig) -> None:
        self.config = config
        self._cache: Dict[int, object] = {}

    def __len__(self) -> int:
        return self.config.scenes

    def scene(self, index: int):
        """The :class:`~da3_plugins.core.synthetic.SyntheticScene` of pool entry ``index``."""
        from ..synthetic import Lighting, SceneConfig, generate_scene

        if index in self._cache:
            return self._cache[index]
        c = self.config
        rng = np.random.default_rng([c.seed, index, 17])
        kind = c.kinds[index % len(c.kinds)]
        light_dir = rng.normal(0, 1, 3)
        light_dir[1] = abs(light_dir[1]) + 0.3  # from above (+y is down)
        lighting = Lighting(direction=tuple(light_dir), ambient=float(rng.uniform(0.2, 0.5)),
                            diffuse=float(rng.uniform(0.4, 0.8)))
        arc = {"room": rng.uniform(40, 120), "inside": rng.uniform(40, 120), "objects": rng.uniform(60, 360)}[kind]
        cfg = SceneConfig(kind=kind, num_views=c.views_per_scene, height=c.height, width=c.width,
                          fov_deg=float(rng.uniform(*c.fov_range)), seed=int(rng.integers(2**31)),
                          num_objects=int(rng.integers(2, 8)), arc_deg=float(arc), lighting=lighting)
        scene = generate_scene(cfg)
        self._cache[index] = scene
        return scene

    def plan(self, rng: np.random.Generator, count: int) -> List[Tuple[int, np.ndarray]]:
        """``count`` samples of one random view count: (pool scene, its view indices in order)
        each, the first view the reference; draws from ``rng`` and renders nothing."""
        c = self.config
        n = int(rng.integers(c.min_views, c.max_views + 1))
        return _samples(rng, c, len(self), n, count)

    def batch(self, rng: np.random.Generator, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Process ``rank``'s ``batch_size`` samples of a global batch of ``batch_size * world_size``
        (see the module docs); one random view count for all, each from a random pool scene."""
        lo, hi = _shard(batch_size, rank, world_size)
        parts = []
        for index, views in self.plan(rng, batch_size * world_size)[lo:hi]:
            s = self.scene(index)
            parts.append((s.images[views], s.depth[views], s.extrinsics[views][:, :3], s.intrinsics[views]))
        return Batch(*(np.stack(x) for x in zip(*parts)))


class RandomizedData:
    """Domain-randomised scenes (:mod:`~da3_plugins.core.synthetic.randomized`), views rendered
    on demand at each batch's size (see :class:`SyntheticDataConfig`: ``sizes``,
    ``max_tokens``).  Pool scene ``i`` is the scene of seed ``(seed, i)``; rendered views are
    kept in a cache of at most ``cache_bytes`` (least recently used out first); rendering is
    deterministic, so the cache changes speed only."""

    def __init__(self, config: SyntheticDataConfig, cache_bytes: int = 1 << 30) -> None:
        from collections import OrderedDict

        self.config = config
        self.cache_bytes = int(cache_bytes)
        self._specs: Dict[int, object] = {}
        self._views: "OrderedDict[Tuple[int, int, int, int], tuple]" = OrderedDict()
        self._held = 0

    def __len__(self) -> int:
        return self.config.scenes

    def spec(self, index: int):
        """The :class:`~da3_plugins.core.synthetic.randomized.RandomSceneSpec` of pool entry ``index``."""
        from ..synthetic.randomized import random_scene_spec

        if index not in self._specs:
            c = self.config
            seed = int(np.random.default_rng([c.seed, index, 19]).integers(2**31))
            self._specs[index] = random_scene_spec(seed, c.views_per_scene, fov_range=c.fov_range)
        return self._specs[index]

    def views(self, index: int, views: Sequence[int], height: int, width: int):
        """(images, depth, w2c (n, 3, 4), K) of views ``views`` of scene ``index`` at that size."""
        from ..synthetic.randomized import render_spec_views

        spec = self.spec(index)
        missing = [v for v in views if (index, int(v), height, width) not in self._views]
        if missing:
            im, d, e, k = render_spec_views(spec, missing, height, width)
            for j, v in enumerate(missing):
                self._views[(index, int(v), height, width)] = (im[j], d[j], e[j], k[j])
                self._held += im[j].nbytes + d[j].nbytes
        out = []
        for v in views:
            key = (index, int(v), height, width)
            self._views.move_to_end(key)
            out.append(self._views[key])
        while self._held > self.cache_bytes and len(self._views) > len(views):
            _, (im, d, _, _) = self._views.popitem(last=False)
            self._held -= im.nbytes + d.nbytes
        return tuple(np.stack(x) for x in zip(*out))

    def plan(self, rng: np.random.Generator, batch_size: int, world_size: int = 1
             ) -> Tuple[Tuple[int, int], int, List[Tuple[int, np.ndarray]]]:
        """The batch's size (one of ``sizes``), the samples per process (``batch_size``, fewer
        under ``max_tokens``) and that many samples per process, as :meth:`SyntheticData.plan`
        (a run of views with ``max_view_gap``); draws from ``rng`` and renders nothing."""
        c = self.config
        sizes = c.sizes or ((c.height, c.width),)
        h, w = sizes[int(rng.integers(len(sizes)))]
        n = int(rng.integers(c.min_views, c.max_views + 1))
        per = batch_size
        if c.max_tokens:
            patches = (h // PATCH_SIZE) * (w // PATCH_SIZE)
            n = max(c.min_views, min(n, c.max_tokens // patches))
            per = int(np.clip(c.max_tokens // (n * patches), 1, batch_size))
        return (h, w), per, _samples(rng, c, len(self), n, per * world_size)

    def batch(self, rng: np.random.Generator, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Process ``rank``'s samples of one global plan (see the module docs and :meth:`plan`)."""
        _shard(batch_size, rank, world_size)
        (h, w), per, plan = self.plan(rng, batch_size, world_size)
        parts = [self.views(index, views, h, w) for index, views in plan[rank * per:(rank + 1) * per]]
        return Batch(*(np.stack(x) for x in zip(*parts)))


def _samples(rng: np.random.Generator, c: SyntheticDataConfig, pool: int, n: int,
             count: int) -> List[Tuple[int, np.ndarray]]:
    """``count`` samples of ``n`` views each: (pool scene, its view indices), a run of views
    with ``max_view_gap`` or any ``n``, shuffled so that any view can be the first (reference)."""
    out = []
    for _ in range(count):
        index = int(rng.integers(pool))
        if c.max_view_gap > 0:
            views = _view_run(rng, c.views_per_scene, n, c.max_view_gap)
        else:
            views = np.sort(rng.choice(c.views_per_scene, n, replace=False))
        rng.shuffle(views)
        out.append((index, views))
    return out


def _shard(batch_size: int, rank: int, world_size: int) -> Tuple[int, int]:
    """The global-batch positions of process ``rank``'s samples: [lo, hi)."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"batch: expected batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, "
                         f"{world_size}")
    return rank * batch_size, (rank + 1) * batch_size


def _view_run(rng: np.random.Generator, total: int, n: int, max_gap: int) -> np.ndarray:
    """n increasing camera indices < total, consecutive ones 1..max_gap apart."""
    gaps = rng.integers(1, max_gap + 1, n - 1)
    while gaps.sum() > total - 1:  # too long for the path: shorten the largest gap
        gaps[gaps.argmax()] -= 1
    start = int(rng.integers(0, total - int(gaps.sum())))
    return start + np.concatenate(([0], np.cumsum(gaps))).astype(np.int64)


def fit_views(images: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, height: int, width: int):
    """Centre-crop to the aspect ratio of (height, width), then resize: images with area
    averaging (or bicubic when enlarging), depth by nearest neighbour (no mixed edges);
    intrinsics follow.  images (N, h, w, 3) uint8, depth (N, h, w), intrinsics (N, 3, 3)."""
    import cv2

    from ..preprocess import _resize

    n, h, w = depth.shape
    target = width / height
    if w / h > target:  # too wide: crop columns
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    k = intrinsics.astype(np.float64).copy()
    k[:, 0, 2] -= x0
    k[:, 1, 2] -= y0
    sx, sy = width / cw, height / ch
    k[:, 0] *= sx
    k[:, 1] *= sy
    out_i = np.stack([_resize(np.ascontiguousarray(im[y0:y0 + ch, x0:x0 + cw]), width, height, enlarge=sx >= 1)
                      for im in images])
    out_d = np.stack([cv2.resize(np.ascontiguousarray(d[y0:y0 + ch, x0:x0 + cw]), (width, height),
                                 interpolation=cv2.INTER_NEAREST) for d in depth.astype(np.float32)])
    return out_i, out_d, k


def pseudo_label_depth(teacher_depth: np.ndarray, measured: np.ndarray, min_points: int = 16,
                       seed: int = 0) -> np.ndarray:
    """Teacher-student labels: align a teacher's dense relative depth to sparse or noisy
    measured depth, view by view, with RANSAC least squares (scale and shift; inlier threshold
    from the median absolute deviation of the residuals: :func:`~.losses.ransac_scale_shift`).

    teacher_depth, measured: (N, H, W); measured is 0 where unknown.  Views with fewer than
    ``min_points`` measurements keep their measurements only (no label elsewhere: 0).
    Returns the aligned dense depth (N, H, W) float32, 0 where the alignment is not positive.
    """
    teacher = np.asarray(teacher_depth, np.float64)
    meas = np.asarray(measured, np.float64)
    if teacher.shape != meas.shape:
        raise ValueError(f"teacher_depth: shape {teacher.shape} differs from the measured depth {meas.shape}")
    out = np.zeros(teacher.shape, np.float32)
    for i in range(len(teacher)):
        ok = (meas[i] > 0) & np.isfinite(meas[i]) & np.isfinite(teacher[i])
        if ok.sum() < min_points:
            out[i] = np.where(ok, meas[i], 0)
            continue
        s, t, _ = L.ransac_scale_shift(torch.from_numpy(teacher[i]), torch.from_numpy(meas[i]),
                                       torch.from_numpy(ok), seed=seed + i)
        aligned = s * teacher[i] + t
        out[i] = np.where(aligned > 0, aligned, 0)
    return out


class FolderData:
    """Batches from a :class:`~da3_plugins.core.datasets.FolderDataset` of the user's scenes.

    With a ``teacher`` model, scenes whose depth is sparse (e.g. COLMAP points) or noisy get
    dense pseudo-labels: the teacher's depth aligned to the measurements
    (:func:`pseudo_label_depth`), as in the paper's teacher-student training.
    """

    def __init__(self, root: Union[str, os.PathLike], config: SyntheticDataConfig, teacher=None) -> None:
        from ..datasets import FolderDataset

        self.dataset = FolderDataset(root)
        self.config = config
        self.teacher = teacher
        self._cache: Dict[int, object] = {}
        self._counts: Dict[int, int] = {}  # views of scenes seen only in other processes' samples

    def __len__(self) -> int:
        return len(self.dataset)

    def _scene(self, index: int):
        """Scene ``index`` fitted to the training size (and pseudo-labelled), cached."""
        if index not in self._cache:
            s = self.dataset[index]
            imgs, depth, k = fit_views(s.images, s.depth, s.intrinsics, self.config.height, self.config.width)
            if self.teacher is not None:
                rec = self.teacher.reconstruct(list(imgs), process_res=max(imgs.shape[1:3]),
                                               process_res_method="upper_bound_resize", seed=0)
                depth = pseudo_label_depth(rec.depth, depth)  # same size: sides are multiples of 14
            self._cache[index] = (imgs, depth, np.asarray(s.extrinsics, np.float64)[:, :3], k)
        return self._cache[index]

    def _view_count(self, index: int) -> int:
        """How many views scene ``index`` has (read once when the scene itself is not loaded)."""
        if index in self._cache:
            return len(self._cache[index][0])
        if index not in self._counts:
            self._counts[index] = self.dataset[index].num_views
        return self._counts[index]

    def plan(self, rng: np.random.Generator, count: int,
             keep: Optional[Sequence[int]] = None) -> List[Tuple[int, np.ndarray]]:
        """``count`` samples of random scenes, one random view count for all (at most the
        smallest scene's): (scene, its view indices) each; draws from ``rng``.  ``keep``: the
        positions that will be loaded (default all): their scenes are loaded (and cached) now,
        the others' views are only counted."""
        c = self.config
        scenes = [int(rng.integers(len(self))) for _ in range(count)]
        for j in range(count) if keep is None else keep:
            self._scene(scenes[j])
        sizes = [self._view_count(i) for i in scenes]
        most = min(c.max_views, min(sizes))
        n = int(rng.integers(min(c.min_views, most), most + 1))
        return [(i, rng.choice(size, n, replace=False)) for i, size in zip(scenes, sizes)]

    def batch(self, rng: np.random.Generator, batch_size: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Process ``rank``'s ``batch_size`` samples of a global batch of ``batch_size * world_size``
        (see the module docs and :meth:`plan`)."""
        lo, hi = _shard(batch_size, rank, world_size)
        parts = []
        for index, views in self.plan(rng, batch_size * world_size, keep=range(lo, hi))[lo:hi]:
            imgs, depth, ext, k = self._scene(index)
            parts.append((imgs[views], depth[views], ext[views], k[views]))
        return Batch(*(np.stack(x) for x in zip(*parts)))


__all__ = ["Batch", "SyntheticData", "RandomizedData", "FolderData", "fit_views", "pseudo_label_depth"]
