"""Rescaling a reconstruction: a uniform change of units about the world origin (numpy only).

A DA3 reconstruction of a non-metric model is right up to one unknown scale.  Multiplying every
length by the same factor ``s`` -- camera centres, depth, points, depth meshes, Gaussian means and
sizes -- leaves every projection unchanged: a camera ``x_cam = R x + t`` becomes ``R (s x) + s t
= s x_cam``, the same pixel.  Rotations and intrinsics do not change.

The Blender extension vendors this module unchanged (its rescale operator applies the same
numbers to the imported objects), so it imports nothing but numpy.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def check_factor(factor: float, what: str = "factor") -> float:
    """``factor`` as a float, or ValueError naming ``what`` unless it is finite and > 0."""
    try:
        s = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a positive number, got {factor!r}") from None
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{what}: expected a positive number, got {factor!r}")
    return s


def factor_for_distance(a: Sequence[float], b: Sequence[float], length: float) -> float:
    """The factor that makes the distance between points ``a`` and ``b`` equal to ``length``
    ("these two points are 2 m apart": ``length=2``)."""
    length = check_factor(length, "length")
    d = float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
    if not (math.isfinite(d) and d > 1e-12):
        raise ValueError(f"the two points are {d:g} apart: pick two different points")
    return length / d


def scale_extrinsics(w2c: np.ndarray, factor: float) -> np.ndarray:
    """World-to-camera poses (..., 3|4, 4) after scaling the world by ``factor``: ``t * s``."""
    s = check_factor(factor)
    out = np.array(w2c, dtype=np.float64, copy=True)
    out[..., :3, 3] *= s
    return out


def scale_transforms(matrices: np.ndarray, factor: float) -> np.ndarray:
    """Object-to-world transforms (..., 4, 4) (cameras' ``matrix_world`` and the like) after
    scaling the world about its origin: the translation times ``s``, the rotation unchanged."""
    return scale_extrinsics(matrices, factor)


def scale_points(points: np.ndarray, factor: float) -> np.ndarray:
    """World points (..., 3) times ``factor`` (any linear world frame: scaling commutes with it)."""
    s = check_factor(factor)
    p = np.asarray(points)
    return p * (np.asarray(s, p.dtype) if p.dtype.kind == "f" else s)


def scale_gaussian_arrays(means: np.ndarray, scales: np.ndarray, factor: float):
    """Gaussian means and (linear) sizes times ``factor``; rotations, colours and opacities
    unchanged.  Returns ``(means, scales)``."""
    return scale_points(means, factor), scale_points(scales, factor)


__all__ = ["check_factor", "factor_for_distance", "scale_extrinsics", "scale_gaussian_arrays", "scale_points",
           "scale_transforms"]
