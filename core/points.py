"""Depth maps to 3-D points, and the confidence rule that picks which pixels count (numpy only).

The one back-projection of the project: the scene (:meth:`Reconstruction.world_points`,
:meth:`Reconstruction.points`), the metrics (``geometry.depth_to_world_points``), training, the
COLMAP writer and the pipeline's chunk alignment all call :func:`depth_to_points`.  It follows
gsplat's ``depth_to_points(depths, camtoworlds, Ks)``: z-depth, rays through the pixel centres
at +0.5 (:func:`conventions.pixel_centres`), batched over any leading dimensions, written as one
matmul of the pixel grid with ``R_c2w K^-1`` per view.

This file is copied into the Blender extension unchanged (``da3_plugins.blender_build``), so it
must stay numpy-only; its one import of ``conventions`` works both inside the package and as a
plain module.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

try:  # inside the package
    from . import conventions as _conv
    from .errors import OptionError
except ImportError:  # copied as plain modules (the Blender extension)
    import conventions as _conv  # type: ignore[no-redef]
    from errors import OptionError  # type: ignore[no-redef]

AUTO_CONF_PERCENTILE = 40.0
"""The official exports' percentile for ``conf_threshold="auto"`` (see :func:`auto_conf_threshold`)."""


# --------------------------------------------------------------------------- back-projection


def depth_to_points(depth: np.ndarray, intrinsics: np.ndarray, extrinsics: Optional[np.ndarray] = None, *,
                    stride: int = 1, dtype=np.float32) -> np.ndarray:
    """Back-project z-depth through the pixel centres: camera-frame or world points.

    Pixel (col i, row j) is the ray through its centre (i + 0.5, j + 0.5) (continuous
    coordinates, ``docs/conventions.md``); its point is ``depth * K^-1 (i + 0.5, j + 0.5, 1)``
    in the camera frame and ``R_c2w`` of that plus the camera centre in the world.  Computed as
    one ``dtype`` matmul of the (h, w, 3) pixel grid with the per-view ``(R_c2w K^-1)^T``.

    Args:
        depth: (..., H, W) z-depth (any leading batch shape, e.g. (N, H, W) or (B, N, H, W)).
        intrinsics: (..., 3, 3) K in pixels of the H x W image, broadcast against depth's
            leading shape (one (3, 3) for all views works).
        extrinsics: optional (..., 3|4, 4) OpenCV world-to-camera poses, broadcast likewise;
            None returns camera-frame points.
        stride: only every ``stride``-th pixel in both directions, starting at pixel (0, 0):
            the result is (..., ceil(H/stride), ceil(W/stride), 3) and equals the full result
            sliced ``[..., ::stride, ::stride, :]``.
        dtype: computation and output dtype (float32, the fast default; float64 where points
            must reproject onto their pixel centres to 1e-6 px).

    Returns:
        (..., h, w, 3) points in ``dtype``.  Invalid depth (0, inf, NaN) gives meaningless
        points: mask them yourself.
    """
    d = np.asarray(depth)
    if d.ndim < 2:
        raise ValueError(f"depth: expected shape (..., H, W), got {d.shape}")
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    stride = int(stride)
    k = np.asarray(intrinsics, np.float64)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics: expected shape (..., 3, 3), got {k.shape}")
    m = np.linalg.inv(k)  # (..., 3, 3) K^-1: pixel -> camera ray with z = 1
    centre = None
    if extrinsics is not None:
        c2w = _conv.w2c_to_c2w(extrinsics)  # (..., 4, 4) float64
        m = c2w[..., :3, :3] @ m
        centre = c2w[..., :3, 3]
    h, w = d.shape[-2:]
    u, v = _conv.pixel_centres(h, w, dtype)
    pix = np.stack((u[::stride, ::stride], v[::stride, ::stride], np.ones_like(u[::stride, ::stride])), -1)
    gh, gw = pix.shape[:2]
    lead = np.broadcast_shapes(d.shape[:-2], m.shape[:-2], () if centre is None else centre.shape[:-1])
    mt = np.broadcast_to(np.swapaxes(m, -1, -2).astype(dtype), lead + (3, 3))
    rays = np.matmul(pix.reshape(gh * gw, 3), mt).reshape(lead + (gh, gw, 3))  # the one matmul
    sub = np.broadcast_to(d[..., ::stride, ::stride], lead + (gh, gw)).astype(dtype, copy=False)
    out = rays * sub[..., None]
    if centre is not None:
        out += np.broadcast_to(centre, lead + (3,)).astype(dtype)[..., None, None, :]
    return out


# --------------------------------------------------------------------------- confidence


def auto_conf_threshold(conf: Optional[np.ndarray], percentile: float = AUTO_CONF_PERCENTILE) -> float:
    """The official exports' "auto" rule: ``min(max(1.05, P_percentile(conf)), P90(conf))``
    over the finite values of ``conf`` (any shape); 0 without confidence."""
    if conf is None:
        return 0.0
    c = np.asarray(conf)
    valid = c[np.isfinite(c)]
    if valid.size == 0:
        return 0.0
    lo = float(np.percentile(valid, percentile))
    return float(min(max(1.05, lo), float(np.percentile(valid, 90))))


def resolve_conf_threshold(conf_threshold: Union[None, float, str], conf: Optional[np.ndarray]) -> Optional[float]:
    """A user's ``conf_threshold`` as a number: None stays None (keep every pixel), ``"auto"``
    becomes :func:`auto_conf_threshold` of ``conf`` (N, H, W), a number stays itself.

    Raises:
        OptionError: any other string (one line naming ``conf_threshold``).
    """
    if isinstance(conf_threshold, str):
        if conf_threshold != "auto":
            raise OptionError(f"conf_threshold: expected a number, None or 'auto', got {conf_threshold!r}")
        return auto_conf_threshold(conf)
    return None if conf_threshold is None else float(conf_threshold)


__all__ = ["AUTO_CONF_PERCENTILE", "auto_conf_threshold", "depth_to_points", "resolve_conf_threshold"]
