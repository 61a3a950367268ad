"""Camera encoder (pose conditioning), camera decoder (pose prediction) and DA3's 9-D pose code.

Pose code: [t (3), q (4, scalar-last xyzw), fov_h, fov_w] where (R | t) is camera-to-world
and the fields of view are those of a pinhole camera of the network input size (H, W).
Decoding always puts the principal point at the image centre (W/2, H/2).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from .backbone import Block, Mlp
from .rotation import matrix_to_quat_xyzw, quat_xyzw_to_matrix


def encode_pose(c2w: Tensor, intrinsics: Tensor, image_size) -> Tensor:
    """c2w (..., 3|4, 4), K (..., 3, 3) in pixels of image_size = (H, W) -> (..., 9)."""
    h, w = image_size
    fov_h = 2 * torch.atan((h / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((w / 2) / intrinsics[..., 0, 0])
    quat = matrix_to_quat_xyzw(c2w[..., :3, :3])
    return torch.cat((c2w[..., :3, 3], quat, fov_h[..., None], fov_w[..., None]), -1).float()


def decode_pose(code: Tensor, image_size):
    """(..., 9) -> (c2w (..., 3, 4), K (..., 3, 3)) with the principal point at the centre."""
    h, w = image_size
    rot = quat_xyzw_to_matrix(code[..., 3:7])
    c2w = torch.cat((rot, code[..., :3, None]), -1)
    fy = (h / 2) / torch.clamp(torch.tan(code[..., 7] / 2), min=1e-6)
    fx = (w / 2) / torch.clamp(torch.tan(code[..., 8] / 2), min=1e-6)
    k = torch.zeros(code.shape[:-1] + (3, 3), dtype=code.dtype, device=code.device)
    k[..., 0, 0], k[..., 1, 1] = fx, fy
    k[..., 0, 2], k[..., 1, 2], k[..., 2, 2] = w / 2, h / 2, 1.0
    return c2w, k


def as_homogeneous(m: Tensor) -> Tensor:
    """(..., 3, 4) or (..., 4, 4) rigid transforms -> (..., 4, 4) with last row (0, 0, 0, 1)."""
    if m.shape[-2:] == (4, 4):
        return m
    if m.shape[-2:] != (3, 4):
        raise ValueError(f"expected (..., 3, 4) or (..., 4, 4) transforms, got {tuple(m.shape)}")
    bottom = torch.zeros(m.shape[:-2] + (1, 4), dtype=m.dtype, device=m.device)
    bottom[..., 0, 3] = 1
    return torch.cat((m, bottom), -2)


def invert_rigid(m: Tensor) -> Tensor:
    """Inverse of rigid transforms, in the layout they came in.

    The contract shared with the numpy twin :func:`core.conventions.invert_rigid`:
    (..., 3, 4) ``[R | t]`` -> (..., 3, 4) ``[R^T | -R^T t]``, and (..., 4, 4) -> (..., 4, 4)
    with last row (0, 0, 0, 1).  Uses R^T, never a general inverse, so R must be a rotation.
    Differentiable; keeps ``m``'s dtype and device.
    """
    if m.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"expected (..., 3, 4) or (..., 4, 4) transforms, got {tuple(m.shape)}")
    rot_t = m[..., :3, :3].transpose(-1, -2)
    out = torch.cat((rot_t, -rot_t @ m[..., :3, 3:4]), -1)
    return as_homogeneous(out) if m.shape[-2] == 4 else out


class CameraEnc(nn.Module):
    """Encodes known cameras into one token per view (replacing the learned camera token).

    9-D pose code -> MLP -> LayerNorm -> 4 transformer blocks attending across the views
    of each batch item -> LayerNorm.
    """

    def __init__(self, dim: int, depth: int = 4, num_heads: int = 16) -> None:
        super().__init__()
        self.pose_branch = Mlp(9, dim // 2, out_dim=dim)
        self.token_norm = nn.LayerNorm(dim, eps=1e-5)
        self.trunk = nn.Sequential(*(Block(dim, num_heads, "mlp", 4 * dim, norm_eps=1e-5) for _ in range(depth)))
        self.trunk_norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, extrinsics: Tensor, intrinsics: Tensor, image_size) -> Tensor:
        """extrinsics (B, S, 4, 4) world-to-camera, K (B, S, 3, 3) -> tokens (B, S, C)."""
        # the pose code uses the camera-to-world matrix; inverted in float32 like upstream
        c2w = torch.linalg.inv(extrinsics.float())
        code = encode_pose(c2w, intrinsics.float(), image_size)
        return self.trunk_norm(self.trunk(self.token_norm(self.pose_branch(code))))


class CameraDec(nn.Module):
    """Camera token of the last output layer (B, S, 2C) -> 9-D pose code (B, S, 9)."""

    def __init__(self, dim_in: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.ReLU())
        self.fc_t = nn.Linear(dim_in, 3)
        self.fc_qvec = nn.Linear(dim_in, 4)
        self.fc_fov = nn.Sequential(nn.Linear(dim_in, 2), nn.ReLU())

    def forward(self, token: Tensor) -> Tensor:
        f = self.backbone(token.float())
        return torch.cat((self.fc_t(f), self.fc_qvec(f), self.fc_fov(f)), -1)
