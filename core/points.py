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

from typing import Optional, Tuple, Union

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
    one ``dtype`` matmul of the (h, w, 3) pixel grid with the per-view ``(R_c2w K^-1)^T``
    (:func:`ray_matrices`, :func:`pixel_grid`), then ``ray * depth + centre`` coordinate by
    coordinate (:func:`points_of_pixels` gives the same numbers for chosen pixels only).

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
    stride = _checked_stride(stride)
    mt, centre = ray_matrices(intrinsics, extrinsics, dtype)
    h, w = d.shape[-2:]
    pix = pixel_grid(h, w, stride, dtype)
    gh, gw = -(-h // stride), -(-w // stride)
    lead = np.broadcast_shapes(d.shape[:-2], mt.shape[:-2], () if centre is None else centre.shape[:-1])
    out = np.matmul(pix, np.broadcast_to(mt, lead + (3, 3))).reshape(lead + (gh, gw, 3))  # the one matmul
    sub = np.broadcast_to(d[..., ::stride, ::stride], lead + (gh, gw)).astype(dtype, copy=False)
    for k in range(3):  # in place, one coordinate at a time: long inner loops, no temporary
        col = out[..., k]
        col *= sub
        if centre is not None:
            col += np.broadcast_to(centre[..., k], lead)[..., None, None]
    return out


def ray_matrices(intrinsics: np.ndarray, extrinsics: Optional[np.ndarray] = None,
                 dtype=np.float32) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The per-view numbers of :func:`depth_to_points`: ``(R_c2w K^-1)^T`` (..., 3, 3) and the
    camera centres (..., 3) in ``dtype`` (centres None without ``extrinsics``: camera frame).

    Computed in float64 and cast once; a pixel row ``(u, v, 1)`` times the first is the ray
    whose z is 1 (z-depth 1)."""
    k = np.asarray(intrinsics, np.float64)
    if k.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics: expected shape (..., 3, 3), got {k.shape}")
    m = np.linalg.inv(k)  # (..., 3, 3) K^-1: pixel -> camera ray with z = 1
    centre = None
    if extrinsics is not None:
        c2w = _conv.w2c_to_c2w(extrinsics)  # (..., 4, 4) float64
        m = c2w[..., :3, :3] @ m
        centre = c2w[..., :3, 3].astype(dtype)
    return np.swapaxes(m, -1, -2).astype(dtype), centre


def pixel_grid(height: int, width: int, stride: int = 1, dtype=np.float32) -> np.ndarray:
    """(h*w, 3) rows ``(u, v, 1)`` of the pixel centres of every ``stride``-th pixel, row-major."""
    u, v = _conv.pixel_centres(height, width, dtype)
    u, v = u[::stride, ::stride], v[::stride, ::stride]
    return np.stack((u, v, np.ones_like(u)), -1).reshape(-1, 3)


def points_of_pixels(depth: np.ndarray, mt: np.ndarray, centre: Optional[np.ndarray], pix: np.ndarray,
                     index: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """One view's points at chosen pixels: the rows ``index`` of :func:`depth_to_points`.

    Bit for bit ``depth_to_points(...).reshape(-1, 3)[index]`` of that view (the same matmul,
    then the same float operations on the chosen pixels only), without the whole view's points.

    Args:
        depth: the view's (h*w,) z-depth of the (strided) grid, row-major.
        mt, centre: the view's (3, 3) and (3,) (or None) from :func:`ray_matrices`.
        pix: :func:`pixel_grid` of the view.
        index: (n,) flat indices into the grid.
        out: optional (n, 3) C-contiguous array of ``mt``'s dtype to write into.

    Returns:
        (n, 3) points (``out`` when given).
    """
    rays = np.matmul(pix, mt)  # (h*w, 3): the same matmul as depth_to_points
    out = np.take(rays, index, axis=0, out=out)
    d = np.take(depth, index).astype(out.dtype, copy=False)
    for k in range(3):
        col = out[:, k]
        col *= d
        if centre is not None:
            col += centre[k]
    return out


def _checked_stride(stride) -> int:
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    return int(stride)


# --------------------------------------------------------------------------- confidence


def auto_conf_threshold(conf: Optional[np.ndarray], percentile: float = AUTO_CONF_PERCENTILE) -> float:
    """The official exports' "auto" rule: ``min(max(1.05, P_percentile(conf)), P90(conf))``
    over the finite values of ``conf`` (any shape); 0 without confidence.

    The percentiles are numpy's (:func:`finite_percentiles`), found without a copy of ``conf``:
    a scene of memory maps is read in blocks and stays on disk."""
    if conf is None:
        return 0.0
    found = finite_percentiles(conf, [percentile, 90])
    if found is None:
        return 0.0
    lo, hi = (float(x) for x in found)
    return float(min(max(1.05, lo), hi))


PERCENTILE_BLOCK = 1 << 20
"""Values read at a time by :func:`finite_percentiles` (its temporaries: about 30 bytes each)."""


def finite_percentiles(values: np.ndarray, q) -> Optional[np.ndarray]:
    """``np.percentile(values[np.isfinite(values)], q)`` (numpy's default "linear" method, the
    same numbers), or None when no value is finite.

    For float32 ``values`` (confidence) without a copy of them: the order statistics the
    percentiles need are found exactly by two counting passes over blocks of the values' bit
    patterns (a histogram of the upper 16 bits, then of the lower 16 bits inside the bins that
    hold the wanted ranks), then interpolated as numpy does.  Other dtypes take numpy's way.

    Args:
        values: any shape (a memory map is read :data:`PERCENTILE_BLOCK` values at a time).
        q: a sequence of percentiles in [0, 100].
    """
    a = np.asarray(values)
    if a.dtype != np.float32:
        finite = a[np.isfinite(a)]
        return None if finite.size == 0 else np.percentile(finite, q, overwrite_input=True)
    flat = a.reshape(-1)

    def keys():  # the finite values' bit patterns, made to sort as the numbers do
        for start in range(0, flat.size, PERCENTILE_BLOCK):
            block = np.asarray(flat[start:start + PERCENTILE_BLOCK])
            bits = block[np.isfinite(block)].view(np.uint32)
            yield np.where(bits >> 31 != 0, ~bits, bits | np.uint32(1 << 31))

    upper = np.zeros(1 << 16, np.int64)
    for k in keys():
        upper += np.bincount(k >> 16, minlength=1 << 16)
    n = int(upper.sum())
    if n == 0:
        return None
    # numpy's "linear" method: virtual index (n - 1) q, its floor and the next one (both the
    # last value at or beyond the end), weight gamma = virtual index - floor
    qs = np.true_divide(np.asarray(q, np.float64), 100)
    virtual = (n - 1) * qs
    prev = np.floor(virtual)
    nxt = prev + 1
    above = virtual >= n - 1
    prev[above], nxt[above] = -1, -1
    prev, nxt = prev.astype(np.intp), nxt.astype(np.intp)
    gamma = virtual - prev
    ranks = sorted({int(r) % n for r in np.concatenate([prev, nxt])})
    ends = np.cumsum(upper)
    bins = {r: int(np.searchsorted(ends, r, side="right")) for r in ranks}
    lower = {b: np.zeros(1 << 16, np.int64) for b in set(bins.values())}
    for k in keys():
        top = k >> 16
        for b, hist in lower.items():
            hist += np.bincount(k[top == b] & 0xFFFF, minlength=1 << 16)
    found = {}
    for r, b in bins.items():
        within = r - (int(ends[b]) - int(upper[b]))
        key = (b << 16) | int(np.searchsorted(np.cumsum(lower[b]), within, side="right"))
        bits = key ^ (1 << 31) if key >> 31 else ~key & 0xFFFFFFFF
        found[r] = np.array([bits], np.uint32).view(np.float32)[0]
    lo = np.array([found[int(r) % n] for r in prev], np.float32)
    hi = np.array([found[int(r) % n] for r in nxt], np.float32)
    diff = np.subtract(hi, lo)  # numpy's _lerp, step by step
    out = np.add(lo, diff * gamma)
    np.subtract(hi, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=np.float64)
    return out


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


__all__ = ["AUTO_CONF_PERCENTILE", "auto_conf_threshold", "depth_to_points", "finite_percentiles", "pixel_grid",
           "points_of_pixels", "ray_matrices", "resolve_conf_threshold"]


# --------------------------------------------------------------------------- sampling


def sample_indices(total: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct indices of ``range(total)``, uniformly at random, sorted (all of them
    when ``count >= total``).  Memory grows with ``count``, not with ``total`` (numpy's
    ``choice(total, count, replace=False)`` permutes all ``total``: 91 MB for 11 M candidates).

    Uniform integers drawn with replacement, deduplicated, topped up until there are enough,
    then the surplus dropped at random: by symmetry every subset of a size is equally likely at
    each stage, so the result is a uniform ``count``-subset.  Deterministic for a ``seed``."""
    total, count = int(total), int(count)
    if total < 0 or count < 0:
        raise ValueError(f"sample_indices: expected total and count >= 0, got {total}, {count}")
    small = np.int32 if total <= np.iinfo(np.int32).max else np.int64
    if count >= total:
        return np.arange(total, dtype=small)
    if 2 * count > total:  # more than half: the complement is the small side
        keep = np.ones(total, dtype=bool)
        keep[sample_indices(total, total - count, seed)] = False
        return np.flatnonzero(keep).astype(small)
    rng = np.random.default_rng(seed)
    picked = np.empty(0, dtype=small)
    while len(picked) < count:
        need = count - len(picked)
        # expected distinct draws of n = need + margin: enough in one round almost always
        draw = rng.integers(0, total, size=need + need // 8 + 64, dtype=small)
        picked = np.union1d(picked, draw)
    if len(picked) > count:  # drop the surplus at random (keeps the order)
        drop = rng.choice(len(picked), len(picked) - count, replace=False)
        keep = np.ones(len(picked), dtype=bool)
        keep[drop] = False
        picked = picked[keep]
    return picked
