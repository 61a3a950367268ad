"""Quaternions in numpy; every function names its component order (``wxyz`` or ``xyzw``).

The project stores (w, x, y, z) everywhere a file or a renderer reads quaternions (COLMAP's
``qvec``, ``GaussianSet.rotations``, Blender, gsplat); DA3's pose code is (x, y, z, w), and its
torch twin is :mod:`core.model.rotation`.  Rotations act on column vectors (``x' = R x``), and
``quat_wxyz_multiply(a, b)`` is the rotation "b, then a" (``R(a b) = R(a) R(b)``).

numpy only and free of relative imports: copied into the Blender extension unchanged.
"""

from __future__ import annotations

import numpy as np


def quat_wxyz_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (w, x, y, z), normalised here -> (..., 3, 3) rotation matrices (float64)."""
    q = np.asarray(q, np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                     2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                     2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat_wxyz(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0 (float64).

    The largest eigenvector of Bar-Itzhack's symmetric 4x4 matrix: robust for any rotation,
    and the nearest quaternion for a matrix that is only nearly orthonormal.
    """
    r = np.asarray(r, np.float64)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) rotation matrices, got shape {r.shape}")
    k = np.zeros(r.shape[:-2] + (4, 4))
    k[..., 0, 0] = r[..., 0, 0] - r[..., 1, 1] - r[..., 2, 2]
    k[..., 1, 1] = r[..., 1, 1] - r[..., 0, 0] - r[..., 2, 2]
    k[..., 2, 2] = r[..., 2, 2] - r[..., 0, 0] - r[..., 1, 1]
    k[..., 3, 3] = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    k[..., 1, 0] = k[..., 0, 1] = r[..., 0, 1] + r[..., 1, 0]
    k[..., 2, 0] = k[..., 0, 2] = r[..., 0, 2] + r[..., 2, 0]
    k[..., 2, 1] = k[..., 1, 2] = r[..., 1, 2] + r[..., 2, 1]
    k[..., 3, 0] = k[..., 0, 3] = r[..., 2, 1] - r[..., 1, 2]
    k[..., 3, 1] = k[..., 1, 3] = r[..., 0, 2] - r[..., 2, 0]
    k[..., 3, 2] = k[..., 2, 3] = r[..., 1, 0] - r[..., 0, 1]
    vals, vecs = np.linalg.eigh(k / 3.0)
    xyzw = np.take_along_axis(vecs, np.argmax(vals, -1)[..., None, None], -1)[..., 0]
    return quat_positive_w(quat_xyzw_to_wxyz(xyzw))


def quat_wxyz_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) (w, x, y, z) quaternions (broadcast): the rotation b, then a."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack((aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw), -1)


def quat_positive_w(q: np.ndarray) -> np.ndarray:
    """(..., 4) (w, x, y, z) -> the same rotations with w >= 0 (q and -q are one rotation)."""
    q = np.asarray(q)
    return np.where(q[..., :1] < 0, -q, q)


def quat_xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """(..., 4) scalar-last (x, y, z, w) -> scalar-first (w, x, y, z)."""
    q = np.asarray(q)
    return np.concatenate((q[..., 3:], q[..., :3]), -1)


def quat_wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """(..., 4) scalar-first (w, x, y, z) -> scalar-last (x, y, z, w)."""
    q = np.asarray(q)
    return np.concatenate((q[..., 1:], q[..., :1]), -1)


__all__ = ["matrix_to_quat_wxyz", "quat_positive_w", "quat_wxyz_multiply", "quat_wxyz_to_matrix",
           "quat_wxyz_to_xyzw", "quat_xyzw_to_wxyz"]
