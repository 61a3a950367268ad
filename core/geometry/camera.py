"""Camera geometry: depth to points, relative poses, ray maps, Sim(3) (Umeyama); numpy in and out.

Conventions (``docs/conventions.md``): depth is z-depth; poses are OpenCV world-to-camera
``(N, 3|4, 4)`` (``x_cam = R x_world + t``); intrinsics are in pixels in continuous
coordinates, the centre of pixel (col i, row j) being (i + 0.5, j + 0.5).  Axis flips and
pixel-centre shifts come from :mod:`conventions` only, back-projection from
:func:`core.points.depth_to_points` only.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from .. import conventions as conv
from ..points import depth_to_points
from ._arrays import ArrayLike, as_numpy as _np, like as _like

# --------------------------------------------------------------------------- points


def _points(depth: ArrayLike, intrinsics: ArrayLike, extrinsics: Optional[ArrayLike]) -> ArrayLike:
    """Checks the shapes of one or N views and calls :func:`core.points.depth_to_points`."""
    d = _np(depth, "depth", None)
    if d.dtype.kind not in "fiu":
        raise ValueError(f"depth: expected numbers, got {d.dtype}")
    out_dtype = np.float64 if d.dtype == np.float64 else np.float32
    k = _np(intrinsics, "intrinsics")
    single = d.ndim == 2
    if single:
        d = d[None]
    if d.ndim != 3:
        raise ValueError(f"depth: expected shape (N, H, W) or (H, W), got {d.shape}")
    if k.shape == (3, 3):
        k = np.broadcast_to(k, (d.shape[0], 3, 3))
    if k.shape != (d.shape[0], 3, 3):
        raise ValueError(f"intrinsics: expected shape ({d.shape[0]}, 3, 3) or (3, 3) to match depth {d.shape}, "
                         f"got {k.shape}")
    ext = None
    if extrinsics is not None:
        ext = _np(extrinsics, "extrinsics")
        if ext.ndim == 2:
            ext = ext[None]
        if ext.ndim != 3 or ext.shape[1:] not in ((3, 4), (4, 4)) or ext.shape[0] != d.shape[0]:
            raise ValueError(f"extrinsics: expected shape ({d.shape[0]}, 3|4, 4), got {np.shape(extrinsics)}")
    out = depth_to_points(d, k, ext, dtype=out_dtype)
    return _like(out[0] if single else out, depth)


def depth_to_camera_points(depth: ArrayLike, intrinsics: ArrayLike) -> ArrayLike:
    """Back-project z-depth through the pixel centres into each camera's frame.

    Args:
        depth: (N, H, W) z-depth (or one (H, W) map).
        intrinsics: (N, 3, 3) K in pixels, continuous coordinates (or one (3, 3) for all).

    Returns:
        (N, H, W, 3) camera-frame points ``depth * K^-1 (i + 0.5, j + 0.5, 1)`` (or (H, W, 3)),
        computed and returned in float64 for float64 depth, float32 otherwise; a torch tensor
        if ``depth`` is one.  Invalid depth (0, inf) gives meaningless points: mask them
        yourself.
    """
    return _points(depth, intrinsics, None)


def depth_to_world_points(depth: ArrayLike, intrinsics: ArrayLike, extrinsics: ArrayLike) -> ArrayLike:
    """World points of every pixel: (N, H, W) z-depth, (N, 3, 3) K and (N, 3|4, 4) OpenCV
    world-to-camera poses -> (N, H, W, 3) (same single-view forms and dtype rules as
    :func:`depth_to_camera_points`); equals ``Reconstruction.world_points()``."""
    return _points(depth, intrinsics, extrinsics)


# --------------------------------------------------------------------------- frames and rays


def poses_relative_to(w2c: ArrayLike, index: int = 0) -> np.ndarray:
    """Poses expressed in view ``index``'s camera frame: ``w2c_i @ c2w_index``, (N, 3, 4).

    This is the frame of DA3's predictions (view 0's camera is the world) and the first step
    of the benchmark's pose metric.
    """
    m = conv.as_4x4(_np(w2c, "w2c"))
    if m.ndim != 3:
        raise ValueError(f"w2c: expected shape (N, 3|4, 4), got {m.shape}")
    if not -len(m) <= index < len(m):
        raise ValueError(f"index: {index} out of range for {len(m)} poses")
    return (m @ conv.invert_rigid(m[index]))[:, :3, :]


def cameras_to_ray_map(extrinsics: ArrayLike, intrinsics: ArrayLike, image_size: Tuple[int, int],
                       map_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Exact ray maps of pinhole cameras, in DA3's ray-head layout: (N, h, w, 6) float64.

    Channels 0-2 are the world direction through each cell centre (unnormalised: camera-frame
    z = 1), channels 3-5 the camera centre.  The h x w grid (``map_size``, default
    ``image_size``) covers the H x W image; cell (r, c) is centred at continuous pixel
    coordinates ((c + 0.5) W / w, (r + 0.5) H / h) -- the reference grid of
    :func:`core.model.ray_pose.rays_to_cameras`.
    """
    ext = conv.as_4x4(_np(extrinsics, "extrinsics"))
    ks = _np(intrinsics, "intrinsics")
    if ext.ndim != 3:
        raise ValueError(f"extrinsics: expected shape (N, 3|4, 4), got {ext.shape}")
    if ks.shape != (len(ext), 3, 3):
        raise ValueError(f"intrinsics: expected shape ({len(ext)}, 3, 3), got {ks.shape}")
    height, width = (int(x) for x in image_size)
    h, w = (int(x) for x in (map_size or image_size))
    if min(height, width, h, w) <= 0:
        raise ValueError(f"image_size / map_size: expected positive sizes, got {image_size} and {map_size}")
    u, v = conv.pixel_centres(h, w)  # cell centres in the h x w grid ...
    pix = np.stack((u * (width / w), v * (height / h), np.ones_like(u)), -1)  # ... in image pixels
    c2w = conv.w2c_to_c2w(ext)
    dirs = np.einsum("nij,njk,hwk->nhwi", c2w[:, :3, :3], np.linalg.inv(ks), pix)
    origins = np.broadcast_to(c2w[:, None, None, :3, 3], dirs.shape)
    return np.concatenate((dirs, origins), -1)


def rays_to_cameras(rays: ArrayLike, image_size: Tuple[int, int], conf: Optional[ArrayLike] = None,
                    seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """numpy wrapper of :func:`core.model.ray_pose.rays_to_cameras` for one set of views.

    Args:
        rays: (N, h, w, 6) ray map (world direction, camera centre).
        image_size: (H, W) the returned intrinsics refer to.
        conf: (N, h, w) positive weights (default ones).
        seed: seeds the route's RANSAC (the global torch RNG is forked, not disturbed).

    Returns:
        world-to-camera (N, 3, 4) and K (N, 3, 3), float64 (computed in float32).  Exact for
        noise-free rays of cameras whose principal point is the image centre.
    """
    import torch

    from ..model.ray_pose import rays_to_cameras as _route

    r = _np(rays, "rays", np.float32)
    if r.ndim != 4 or r.shape[-1] != 6:
        raise ValueError(f"rays: expected shape (N, h, w, 6), got {r.shape}")
    c = np.ones(r.shape[:-1], np.float32) if conf is None else _np(conf, "conf", np.float32)
    if c.shape != r.shape[:-1]:
        raise ValueError(f"conf: expected shape {r.shape[:-1]}, got {c.shape}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ext, k = _route(torch.from_numpy(r)[None], torch.from_numpy(c)[None], tuple(int(x) for x in image_size))
    return ext[0].double().numpy(), k[0].double().numpy()


# --------------------------------------------------------------------------- Sim(3)


def umeyama_sim3(src: ArrayLike, dst: ArrayLike, allow_collinear: bool = False
                 ) -> Tuple[np.ndarray, np.ndarray, Union[float, np.ndarray]]:
    """Least-squares similarity with ``dst ~= s R src + t`` (Umeyama; :mod:`core.model.sim3`).

    Args:
        src: (M, 3) or batched (..., M, 3) points to map (the estimate).
        dst: the same shape: the targets (the reference).
        allow_collinear: accept rank-1 configurations (2 points, a line); the rotation
            about the line is then arbitrary.

    Returns:
        R (3, 3), t (3,), s (a float) -- or (..., 3, 3), (..., 3), (...) arrays for batches.

    Raises:
        ValueError: mismatched shapes, too few points or degenerate sets.
    """
    import torch

    from ..model.sim3 import umeyama_sim3 as _umeyama

    a, b = _np(src, "src"), _np(dst, "dst")
    if a.ndim < 2 or a.shape[-1] != 3:
        raise ValueError(f"src: expected shape (..., M, 3), got {a.shape}")
    if b.shape != a.shape:
        raise ValueError(f"dst: expected the shape of src {a.shape}, got {b.shape}")
    r, t, s = _umeyama(torch.from_numpy(a), torch.from_numpy(b), allow_collinear=allow_collinear)
    r, t, s = r.numpy(), t.numpy(), s.numpy()
    return r, t, (float(s) if s.ndim == 0 else s)


umeyama = umeyama_sim3  # the earlier name, used by core.pipeline


def apply_sim3_to_points(points: ArrayLike, r: ArrayLike, t: ArrayLike, s: float) -> np.ndarray:
    """(..., 3) points X -> s R X + t (float64)."""
    p = _np(points, "points")
    if p.shape[-1:] != (3,):
        raise ValueError(f"points: expected shape (..., 3), got {p.shape}")
    return float(s) * p @ _np(r, "r").T + _np(t, "t")


def apply_sim3_to_poses(w2c: ArrayLike, r: ArrayLike, t: ArrayLike, s: float) -> np.ndarray:
    """World-to-camera poses after the world is mapped by ``X -> s R X + t``: (..., 3, 4).

    The cameras are carried along with the world: centres C -> s R C + t, camera-to-world
    rotations R_c2w -> R R_c2w (the official ``R_i' = R R_i, t_i' = R (s t_i) + t`` on c2w).
    A point seen at depth z is then seen at depth s z, so depth maps scale by ``s``.  This is
    what aligns one chunk of a long reconstruction onto another with the Sim(3) from
    :func:`umeyama_sim3` of their shared cameras' centres (or points).
    """
    m = conv.as_4x4(_np(w2c, "w2c"))
    rr, tt = _np(r, "r"), _np(t, "t")
    if rr.shape != (3, 3) or tt.shape != (3,):
        raise ValueError(f"r, t: expected shapes (3, 3) and (3,), got {rr.shape} and {tt.shape}")
    if not float(s) > 0:
        raise ValueError(f"s: expected a positive scale, got {s}")
    c2w = conv.w2c_to_c2w(m)
    c2w[..., :3, :3] = rr @ c2w[..., :3, :3]
    c2w[..., :3, 3] = float(s) * c2w[..., :3, 3] @ rr.T + tt
    return conv.c2w_to_w2c(c2w)


apply_sim3_to_w2c = apply_sim3_to_poses  # the earlier name, used by core.pipeline


__all__ = ["apply_sim3_to_points", "apply_sim3_to_poses", "apply_sim3_to_w2c", "cameras_to_ray_map",
           "depth_to_camera_points", "depth_to_world_points", "poses_relative_to", "rays_to_cameras", "umeyama",
           "umeyama_sim3"]
