"""Depth and confidence as pictures (colour-mapped PNG) and as data (16-bit PNG), numpy + Pillow.

Colour maps use Turbo (a polynomial fit of Google's colour map), near = red/warm, far =
blue/cold, normalised per view between the 2nd and 98th percentile of inverse depth; invalid
pixels are black.  The 16-bit PNGs hold ``depth / unit`` (0 = invalid), with ``unit`` in
``depth_units.json`` beside them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from ..reconstruction import Reconstruction, atomic_folder
from .nerfstudio import depth_to_uint16

PathLike = Union[str, os.PathLike]

# Turbo colour map, polynomial approximation (Mikhailov 2019), input t in [0, 1]
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (shape + (3,))."""
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    powers = np.stack([t**i for i in range(6)], -1)
    rgb = np.stack([powers @ np.array(c) for c in (_TURBO_R, _TURBO_G, _TURBO_B)], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def colorize_depth(depth: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8: near warm, far cold, invalid black."""
    ok = np.isfinite(depth) & (depth > 0) if valid is None else valid & np.isfinite(depth) & (depth > 0)
    out = np.zeros(depth.shape + (3,), np.uint8)
    if not ok.any():
        return out
    inv = 1.0 / depth[ok]
    lo, hi = np.percentile(inv, 2), np.percentile(inv, 98)
    t = (inv - lo) / max(hi - lo, 1e-12)
    out[ok] = turbo(t)
    return out


def colorize_confidence(conf: np.ndarray) -> np.ndarray:
    """(H, W) confidence -> (H, W, 3) uint8: high warm, low cold (log scale, percentiles)."""
    c = np.log(np.maximum(conf, 1e-6))
    lo, hi = np.percentile(c, 2), np.percentile(c, 98)
    return turbo((c - lo) / max(hi - lo, 1e-12))


def write_depth_images(folder: PathLike, rec: Reconstruction, *, colour: bool = True, raw16: bool = True,
                       preview: bool = True, overwrite: bool = True) -> Path:
    """Per view: ``<name>_depth.png`` (colour), ``<name>_conf.png`` (colour, when the model
    gives confidence), ``<name>_depth16.png`` (16-bit), ``<name>_preview.png`` (photo | depth)."""
    folder = Path(folder)
    with atomic_folder(folder, overwrite) as tmp:
        unit = None
        if raw16:
            _, unit = depth_to_uint16(rec.depth)
        for i, name in enumerate(rec.image_names):
            coloured = colorize_depth(rec.depth[i], None if rec.sky is None else ~rec.sky[i])
            if colour:
                Image.fromarray(coloured).save(tmp / f"{name}_depth.png")
                if rec.conf is not None:
                    Image.fromarray(colorize_confidence(rec.conf[i])).save(tmp / f"{name}_conf.png")
            if raw16:
                q, _ = depth_to_uint16(rec.depth[i], unit)
                Image.fromarray(q).save(tmp / f"{name}_depth16.png")
            if preview:
                Image.fromarray(np.concatenate([rec.images[i], coloured], 1)).save(tmp / f"{name}_preview.png")
        if raw16:
            (tmp / "depth_units.json").write_text(json.dumps({
                "unit": unit, "meaning": "depth = png_value * unit (z-depth; 0 = no depth)",
                "metric": rec.is_metric}, indent=2))
    return folder
