"""Depth and confidence as pictures (colour-mapped PNG) and as data (16-bit PNG), numpy + Pillow.

* **Pictures** use Turbo (Google's colour map, as Mikhailov's polynomial fit, no matplotlib):
  depth is normalised per view between the 2nd and 98th percentile of *inverse* depth, so
  **near is warm (red), far is cold (blue)**; confidence is normalised between the 2nd and 98th
  percentile of log-confidence, **high is warm**.  Invalid pixels (non-finite or non-positive
  depth, sky when the reconstruction has a sky mask) are black.
* **Data**: 16-bit PNGs hold ``round(depth / unit)`` with 0 meaning "no depth"; ``unit`` is
  1e-3 (millimetres for metric depth, nerfstudio's default ``depth_unit_scale_factor``) unless
  the largest depth would not fit in 16 bits, then ``max_depth / 65535``.  The unit is written
  beside the PNGs in ``depth_units.json``.  The depth is z-depth, at the processed resolution.
* **Training data**: the folder is also a scene folder of the simple training-data format
  (``docs/training-data.md``, read by :mod:`core.datasets`): ``images/<stem>.png`` (the
  processed images), ``<stem>_depth.npy`` (float32 z-depth, 0 where invalid or sky),
  ``<stem>_conf.npy`` (float32 confidence) and ``cameras.json`` (K and OpenCV world-to-camera
  at the processed resolution, ``min_conf``: the "auto" confidence threshold), so that
  ``da3p train --data`` reads it directly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from ..points import resolve_conf_threshold
from ..reconstruction import Reconstruction, atomic_folder

PathLike = Union[str, os.PathLike]

#: the unit of 16-bit depth PNGs unless the depth would overflow (millimetres for metric depth)
DEFAULT_DEPTH_UNIT = 1e-3

# Turbo colour map, polynomial approximation (Mikhailov 2019), input t in [0, 1]
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape; clipped) -> uint8 RGB of shape ``t.shape + (3,)``.

    0 is dark blue, 1 dark red.
    """
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    powers = np.stack([t**i for i in range(6)], -1)
    rgb = np.stack([powers @ np.array(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _percentile_map(values: np.ndarray, ok: np.ndarray, lo_pct: float = 2.0, hi_pct: float = 98.0) -> np.ndarray:
    """Turbo colours of ``values[ok]`` normalised between two percentiles; black elsewhere."""
    out = np.zeros(values.shape + (3,), np.uint8)
    if not ok.any():
        return out
    v = values[ok].astype(np.float64)
    lo, hi = np.percentile(v, lo_pct), np.percentile(v, hi_pct)
    out[ok] = turbo((v - lo) / max(hi - lo, 1e-12))
    return out


def colorize_depth(depth: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 picture: near warm, far cold, invalid black.

    Args:
        depth: z-depth (any unit); non-finite or non-positive values are invalid.
        valid: optional (H, W) bool mask of pixels to show (e.g. not sky).
    """
    return _colorize(depth, valid, "depth", lambda d: 1.0 / d)


def colorize_confidence(conf: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) confidence -> (H, W, 3) uint8 picture: high warm, low cold (log scale), invalid black.

    Args:
        conf: confidence (DA3's is >= 1); non-finite or non-positive values are invalid.
        valid: optional (H, W) bool mask of pixels to show.
    """
    return _colorize(conf, valid, "conf", np.log)


def _colorize(values: np.ndarray, valid: Optional[np.ndarray], name: str, transform) -> np.ndarray:
    """Colour ``transform(values)`` by percentiles where values are finite and positive (and
    ``valid``); everything else black."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) array, got shape {values.shape}")
    ok = np.isfinite(values) & (values > 0)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    mapped = np.zeros(values.shape, np.float64)
    mapped[ok] = transform(values[ok])
    return _percentile_map(mapped, ok)


def depth_to_uint16(depth: np.ndarray, unit: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """Depth (any shape) -> ``(uint16 array, unit)`` with ``depth ~= value * unit``; 0 = invalid.

    Args:
        depth: z-depth; non-finite or non-positive values become 0.
        unit: the depth of one step; by default :data:`DEFAULT_DEPTH_UNIT` (1e-3), or
            ``max_depth / 65535`` when the largest depth would not fit.  Depths beyond
            ``65535 * unit`` are clipped to 65535; positive depths below half a unit become 1.
    """
    depth = np.asarray(depth)
    valid = np.isfinite(depth) & (depth > 0)
    if unit is None:
        unit = default_depth_unit(float(depth[valid].max()) if valid.any() else 1.0)
    unit = float(unit)
    if not np.isfinite(unit) or unit <= 0:
        raise ValueError(f"unit: expected a positive number, got {unit!r}")
    q = np.zeros(depth.shape, np.uint16)
    q[valid] = np.clip(np.round(depth[valid].astype(np.float64) / unit), 1, 65535).astype(np.uint16)
    return q, unit


def default_depth_unit(top: float) -> float:
    """The 16-bit depth step for depths up to ``top``: :data:`DEFAULT_DEPTH_UNIT`, or
    ``top / 65535`` when that would overflow."""
    return DEFAULT_DEPTH_UNIT if top / DEFAULT_DEPTH_UNIT <= 65535 else top / 65535.0


def largest_depth(rec: Reconstruction, drop_sky: bool = True) -> float:
    """The largest valid depth (finite, positive, not sky with ``drop_sky``), view by view
    (a scene of memory maps stays on disk); 1.0 when there is none."""
    top = None
    for i in range(rec.num_views):
        ok = rec.valid_mask(None, drop_sky, views=slice(i, i + 1))[0]
        if ok.any():
            m = float(rec.depth[i][ok].max())
            top = m if top is None else max(top, m)
    return 1.0 if top is None else top


def uint16_to_depth(values: np.ndarray, unit: float) -> np.ndarray:
    """Inverse of :func:`depth_to_uint16`: float32 depth, NaN where the value is 0."""
    v = np.asarray(values).astype(np.float64) * float(unit)
    v[np.asarray(values) == 0] = np.nan
    return v.astype(np.float32)


def file_stems(rec: Reconstruction) -> List[str]:
    """One file-system-safe, unique stem per view, from ``rec.image_names``.

    Characters other than letters, digits, ``-``, ``_`` and ``.`` become ``_``; repeated names
    get ``_1``, ``_2`` ... suffixes.
    """
    out: List[str] = []
    seen = set()
    for name in rec.image_names:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "view"
        cand, k = stem, 0
        while cand in seen:
            k += 1
            cand = f"{stem}_{k}"
        seen.add(cand)
        out.append(cand)
    return out


def write_depth_images(folder: PathLike, rec: Reconstruction, *, colour: bool = True, raw16: bool = True,
                       preview: bool = True, training: bool = True, unit: Optional[float] = None,
                       overwrite: bool = False) -> Path:
    """Write per-view depth pictures and data into ``folder`` (written whole, atomically).

    Per view (``<stem>`` from :func:`file_stems`), all at the processed resolution:

    * ``<stem>_depth.png``: colour-mapped depth (near warm, far cold, invalid/sky black);
    * ``<stem>_conf.png``: colour-mapped confidence, when the reconstruction has one;
    * ``<stem>_depth16.png``: 16-bit depth, ``depth = value * unit`` (0 = no depth), with
      ``depth_units.json`` recording ``unit`` (one unit for all views);
    * ``<stem>_preview.png``: the processed photo and its depth picture side by side;
    * with ``training`` (the default), a training-data scene folder (the simple format of
      ``docs/training-data.md``): ``images/<stem>.png`` (the processed image),
      ``<stem>_depth.npy`` (float32 z-depth, 0 where invalid: non-finite, non-positive, sky),
      ``<stem>_conf.npy`` (float32 confidence, when the reconstruction has one; NaN written
      as 0) and ``cameras.json``: ``frames`` of ``{image, K, w2c (3x4), depth, conf}`` (paths
      relative to ``folder``; K and OpenCV world-to-camera of the processed images) and
      ``min_conf``, the "auto" confidence threshold of the reconstruction
      (:func:`core.points.resolve_conf_threshold`), or null without confidence: the loader
      makes pixels with ``conf < min_conf`` unknown.

    Args:
        training: also write the training-data files (``images/``, ``*.npy``, ``cameras.json``).
        unit: the 16-bit depth step; default: see :func:`depth_to_uint16`.
        overwrite: replace an existing ``folder``; otherwise an existing folder is an error.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    stems = file_stems(rec)
    with atomic_folder(folder, overwrite) as tmp:
        if raw16:
            unit = default_depth_unit(largest_depth(rec)) if unit is None else float(unit)
        if training:
            (tmp / "images").mkdir()
            frames = []
        for i, stem in enumerate(stems):  # view by view: memory maps stay on disk
            valid = rec.valid_mask(None, drop_sky=True, views=slice(i, i + 1))[0]
            coloured = colorize_depth(rec.depth[i], valid)
            if training:
                frames.append(_write_training_view(tmp, rec, i, stem, valid))
            if colour:
                Image.fromarray(coloured).save(tmp / f"{stem}_depth.png")
                if rec.conf is not None:
                    Image.fromarray(colorize_confidence(rec.conf[i], valid)).save(tmp / f"{stem}_conf.png")
            if raw16:
                q, _ = depth_to_uint16(np.where(valid, rec.depth[i], np.nan), unit)
                Image.fromarray(q).save(tmp / f"{stem}_depth16.png")
            if preview:
                Image.fromarray(np.concatenate([rec.images[i], coloured], 1)).save(tmp / f"{stem}_preview.png")
        if raw16:
            (tmp / "depth_units.json").write_text(json.dumps({
                "unit": unit,
                "meaning": "depth = png_value * unit; z-depth along the optical axis; 0 = no depth (invalid or sky)",
                "metric": rec.is_metric,
                "resolution": [rec.height, rec.width],
                "files": {stem: f"{stem}_depth16.png" for stem in stems},
            }, indent=2))
        if training:
            min_conf = None if rec.conf is None else float(resolve_conf_threshold("auto", rec.conf))
            (tmp / "cameras.json").write_text(json.dumps({
                "frames": frames,
                "min_conf": min_conf,
                "meaning": "a training-data scene folder (docs/training-data.md): processed images, z-depth "
                           "(0 = unknown), confidence; pixels with conf < min_conf are unknown",
                "metric": rec.is_metric,
            }, indent=1))
    return folder


def _write_training_view(tmp: Path, rec: Reconstruction, i: int, stem: str, valid: np.ndarray) -> dict:
    """View ``i``'s image, depth (0 where not ``valid``) and confidence files in ``tmp``; its
    ``cameras.json`` frame."""
    Image.fromarray(np.ascontiguousarray(rec.images[i])).save(tmp / "images" / f"{stem}.png")
    np.save(tmp / f"{stem}_depth.npy", np.where(valid, rec.depth[i], 0).astype(np.float32))
    frame = {"image": f"images/{stem}.png",
             "K": np.asarray(rec.intrinsics[i], np.float64).tolist(),
             "w2c": np.asarray(rec.extrinsics[i], np.float64)[:3].tolist(),
             "depth": f"{stem}_depth.npy"}
    if rec.conf is not None:
        conf = np.nan_to_num(np.asarray(rec.conf[i], np.float32), nan=0.0, posinf=np.finfo(np.float32).max,
                             neginf=0.0)
        np.save(tmp / f"{stem}_conf.npy", conf)
        frame["conf"] = f"{stem}_conf.npy"
    return frame
