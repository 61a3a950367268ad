"""Points become Gaussians: the colour constant, the "about a pixel wide" seed size and the
multi-view de-duplication (numpy only).

One rule for every place that turns reconstructed points into splats: the preview
(:func:`core.export.preview.points_as_gaussians`), the nerfstudio dataparser's seed points (and
through them ``da3-splat``), and the Blender importer's splat colours.

* **Colour**: degree-0 spherical harmonics, ``rgb = 0.5 + SH_C0 * dc`` (3DGS, gsplat).
* **Size**: a point seen at depth z by a camera of focal length fx covers z / fx world units per
  pixel.  The splat a rasteriser draws is the projected Gaussian plus its ``EPS2D`` low-pass
  filter (px^2, gsplat's ``eps2d``, also :mod:`core.render`'s), so the 3-D scale makes up the
  rest of ``SEED_FOOTPRINT``; a thinned cloud gets wider splats, by the square root of the
  thinning, so surfaces stay closed.
* **De-duplication**: every view's depth map covers the overlap again; :func:`dedupe_views`
  keeps each surface patch once, from the view that samples it most finely.

Copied into the Blender extension unchanged, so numpy-only; its one import (``conventions``)
works both inside the package and as a plain module.
"""

from __future__ import annotations

import numpy as np

try:  # inside the package
    from . import conventions as _conv
except ImportError:  # copied as plain modules (the Blender extension)
    import conventions as _conv  # type: ignore[no-redef]

SH_C0 = 0.28209479177387814
"""The degree-0 real spherical harmonic, 1 / (2 sqrt(pi)): ``rgb = 0.5 + SH_C0 * dc``."""
SEED_FOOTPRINT = 0.6
"""Standard deviation, in pixels of the view that saw it, of the splat drawn for a seed point."""
EPS2D = 0.3
"""Pixels^2 the rasterisers add to every projected covariance (gsplat's ``eps2d``, also
``core.render``'s): a splat is never narrower than sqrt(0.3) = 0.55 px."""
MIN_FOOTPRINT = 0.1
"""Smallest standard deviation, in pixels, of a seed Gaussian itself (before EPS2D)."""


def rgb_to_sh_dc(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 colours -> (..., 3) float32 degree-0 SH coefficients."""
    return ((np.asarray(colors, np.float32) / 255.0) - 0.5) / np.float32(SH_C0)


def sh_dc_to_rgb(dc: np.ndarray) -> np.ndarray:
    """(..., 3) degree-0 SH coefficients -> (..., 3) float RGB in [0, 1] (clipped)."""
    return np.clip(0.5 + SH_C0 * np.asarray(dc), 0.0, 1.0)


def depth_in_view(points: np.ndarray, view: np.ndarray, extrinsics: np.ndarray) -> np.ndarray:
    """(P,) z-depth of world points (P, 3) in the cameras ``view`` (P,) of (N, 3|4, 4) w2c poses."""
    ext = np.asarray(extrinsics, np.float64)[np.asarray(view)]
    return np.einsum("pj,pj->p", ext[:, 2, :3], np.asarray(points, np.float64)) + ext[:, 2, 3]


def seed_footprint(density: float = 1.0, footprint: float = SEED_FOOTPRINT) -> float:
    """Standard deviation in pixels of a seed Gaussian itself (before ``EPS2D``), for a cloud
    holding ``density`` (0, 1] of the pixels that made it, drawn ``footprint`` pixels wide:
    ``sqrt(max(footprint^2 / density - EPS2D, MIN_FOOTPRINT^2))``."""
    return float(np.sqrt(max(footprint**2 / min(1.0, max(float(density), 1e-9)) - EPS2D, MIN_FOOTPRINT**2)))


def seed_scales(points: np.ndarray, view: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray,
                density: float = 1.0, footprint: float = SEED_FOOTPRINT) -> np.ndarray:
    """World-space standard deviations (P,) float64 of round seed Gaussians, about a pixel wide.

    Args:
        points: (P, 3) world points.
        view: (P,) the view each point comes from.
        extrinsics: (N, 3|4, 4) OpenCV world-to-camera; intrinsics: (N, 3, 3) K in pixels.
        density: the fraction of the view's pixels the cloud keeps (after confidence filtering,
            de-duplication and thinning), in (0, 1].
        footprint: the drawn splat's standard deviation in the view's pixels (default
            :data:`SEED_FOOTPRINT`, which exact-depth seeds need; a picture seen from
            elsewhere wants wider splats).

    Returns:
        ``seed_footprint(density, footprint) * z / fx`` of each point's own view.
    """
    fx = np.asarray(intrinsics, np.float64)[np.asarray(view), 0, 0]
    return seed_footprint(density, footprint) * depth_in_view(points, view, extrinsics) / fx


def dedupe_views(points: np.ndarray, view: np.ndarray, depth: np.ndarray, extrinsics: np.ndarray,
                 intrinsics: np.ndarray, valid: np.ndarray, tol: float = 0.02) -> np.ndarray:
    """(P,) bool: the points of a multi-view cloud to keep, each surface patch once.

    A point is dropped when another view samples it more finely.  View j *sees* a point when it
    projects within j's grid of pixel centres onto valid pixels and its depth in j matches j's
    depth map there (inverse depth interpolated bilinearly -- exact on planes -- within a
    relative ``tol``); it samples it more finely when the point's depth per pixel (z / fx) is
    smaller in j than in its own view (ties to the lower index).  A point no other view sees
    (occlusion, edges, depth that disagrees between views) is always kept.

    Args:
        points: (P, 3) world points; view: (P,) the view each comes from.
        depth: (N, H, W) z-depth; extrinsics: (N, 3|4, 4) OpenCV w2c; intrinsics: (N, 3, 3).
        valid: (N, H, W) bool, the pixels that made points.
    """
    pts = np.asarray(points, np.float64)
    view = np.asarray(view)
    depth = np.asarray(depth)
    n, h, w = depth.shape
    ext = np.asarray(extrinsics, np.float64)
    k = np.asarray(intrinsics, np.float64)
    k_index = _conv.intrinsics_to_integer_centres(k)  # project to array indices: centres at integers
    own = depth_in_view(pts, view, ext) / k[view, 0, 0]
    inv = np.where(valid, 1.0 / np.where(valid, depth, 1.0), np.nan)
    finer = np.zeros(len(pts), bool)
    for j in range(n):
        cam = pts @ ext[j, :3, :3].T + ext[j, :3, 3]
        step = cam[:, 2] / k[j, 0, 0]
        cand = np.flatnonzero((view != j) & (cam[:, 2] > 0) & ((step < own) | ((step == own) & (j < view))))
        if cand.size == 0:
            continue
        c = cam[cand]
        uvw = c @ k_index[j].T
        u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
        inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
        u0 = np.clip(np.floor(np.where(inside, u, 0)).astype(np.int64), 0, max(w - 2, 0))
        v0 = np.clip(np.floor(np.where(inside, v, 0)).astype(np.int64), 0, max(h - 2, 0))
        u1, v1 = np.minimum(u0 + 1, w - 1), np.minimum(v0 + 1, h - 1)
        fu, fv = np.clip(u - u0, 0, 1), np.clip(v - v0, 0, 1)
        d = inv[j]
        interp = ((1 - fv) * ((1 - fu) * d[v0, u0] + fu * d[v0, u1]) + fv * ((1 - fu) * d[v1, u0] + fu * d[v1, u1]))
        with np.errstate(invalid="ignore"):
            seen = inside & (np.abs(interp * c[:, 2] - 1.0) <= tol)
        finer[cand[seen]] = True
    return ~finer


__all__ = ["EPS2D", "MIN_FOOTPRINT", "SEED_FOOTPRINT", "SH_C0", "dedupe_views", "depth_in_view", "rgb_to_sh_dc",
           "seed_footprint", "seed_scales", "sh_dc_to_rgb"]
