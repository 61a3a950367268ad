"""Quaternions in torch (batched over leading dimensions); every function names its component order.

DA3's pose code is scalar-last (x, y, z, w); the Gaussians, renderers and files are
scalar-first (w, x, y, z).  The numpy twin is :mod:`core.quaternions`, with the same names and
conventions (column vectors, ``R(q)`` rotates ``x -> R x``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quat_xyzw_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) scalar-last quaternion, not necessarily unit -> (..., 3, 3) rotation.

    Uses 2 / |q|^2, so a non-normalised quaternion gives the rotation of its direction.
    """
    x, y, z, w = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    m = torch.stack(
        (
            1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
            s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
            s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y),
        ),
        -1,
    )
    return m.reshape(q.shape[:-1] + (3, 3))


def quat_wxyz_to_matrix(q: Tensor) -> Tensor:
    """(..., 4) scalar-first (w, x, y, z) quaternion, not necessarily unit -> (..., 3, 3) rotation."""
    return quat_xyzw_to_matrix(q[..., [1, 2, 3, 0]])


def matrix_to_quat_xyzw(m: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit scalar-last quaternion with w >= 0.

    Of the four algebraically equivalent candidates (each divides by one of 4w^2, 4x^2,
    4y^2, 4z^2), the one with the largest divisor is taken, the divisor floored at 0.1,
    which is well conditioned for every rotation.
    """
    if m.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) rotation matrices, got {tuple(m.shape)}")
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.reshape(m.shape[:-2] + (9,)).unbind(-1)
    # |w|, |x|, |y|, |z| (times 2) from the diagonal
    two_abs = torch.sqrt(
        torch.clamp(
            torch.stack(
                (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1
            ),
            min=0,
        )
    )
    # row k: the quaternion (w, x, y, z) scaled by 2 * component k
    rows = torch.stack(
        (
            torch.stack((two_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, two_abs[..., 1] ** 2, m10 + m01, m02 + m20), -1),
            torch.stack((m02 - m20, m10 + m01, two_abs[..., 2] ** 2, m12 + m21), -1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, two_abs[..., 3] ** 2), -1),
        ),
        -2,
    )
    candidates = rows / (2.0 * torch.clamp(two_abs[..., None], min=0.1))
    best = F.one_hot(two_abs.argmax(-1), num_classes=4) > 0.5
    wxyz = candidates[best].reshape(m.shape[:-2] + (4,))
    xyzw = wxyz[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def matrix_to_quat_wxyz(m: Tensor) -> Tensor:
    """(..., 3, 3) rotation -> (..., 4) unit scalar-first (w, x, y, z) quaternion with w >= 0."""
    return matrix_to_quat_xyzw(m)[..., [3, 0, 1, 2]]


__all__ = ["matrix_to_quat_wxyz", "matrix_to_quat_xyzw", "quat_wxyz_to_matrix", "quat_xyzw_to_matrix"]
