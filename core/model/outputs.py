"""Typed outputs of the DA3 network (torch tensors, batch-first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor


@dataclass
class Gaussians:
    """Per-pixel 3-D Gaussians in world space, flattened over (view, row, column).

    ``rotations`` are the 4 numbers the official adapter emits: a unit quaternion in
    scalar-last (x, y, z, w) order with w >= 0 (the official field name says wxyz; the
    official renderer and PLY exporter use these numbers as they are).
    """

    means: Tensor  # (B, N*H*W, 3)
    scales: Tensor  # (B, N*H*W, 3)
    rotations: Tensor  # (B, N*H*W, 4)
    harmonics: Tensor  # (B, N*H*W, 3, (sh_degree+1)^2), colour-major
    opacities: Tensor  # (B, N*H*W)
    # the Gaussians live in the predicted camera frame with translations multiplied by this
    # (B,) factor: 1 unless given cameras set the scale (see GaussianAdapter)
    frame_scale: Optional[Tensor] = None


@dataclass
class NetworkOutput:
    """What ``DA3Net.forward`` returns.

    Cameras are OpenCV world-to-camera (x right, y down, z forward); intrinsics are in
    pixels of the network input (H, W) with the principal point in continuous pixel
    coordinates (pixel (i, j) has its centre at (i + 0.5, j + 0.5)).
    """

    depth: Tensor  # (B, N, H, W) z-depth
    depth_conf: Optional[Tensor] = None  # (B, N, H, W), >= 1; None for mono/metric models
    extrinsics: Optional[Tensor] = None  # (B, N, 3, 4) world-to-camera
    intrinsics: Optional[Tensor] = None  # (B, N, 3, 3)
    ray: Optional[Tensor] = None  # (B, N, 8*H/14, 8*W/14, 6): direction (0:3), origin (3:6)
    ray_conf: Optional[Tensor] = None  # (B, N, 8*H/14, 8*W/14)
    sky: Optional[Tensor] = None  # (B, N, H, W) sky score (ReLU output; sky where >= 0.5)
    gaussians: Optional[Gaussians] = None
    is_metric: bool = False
    """True when depth and translations are in metres (the nested model)."""
    scale_factor: Optional[float] = None
    """Nested model: the factor that took the any-view branch to metres."""
    view_features: Optional[Tensor] = None
    """(B, N, C) mean of each view's patch tokens at the first output layer (the within-view
    half where the backbone concatenates two): a place descriptor for loop detection."""
    aux: Optional[dict] = None
    """``feat_layer_{i}`` -> (B, N, H/14, W/14, C) for requested feature layers."""

    def to(self, device=None, dtype=None) -> "NetworkOutput":
        def conv(t):
            if isinstance(t, Tensor):
                return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
            return t

        out = NetworkOutput(**{k: conv(v) for k, v in vars(self).items() if k != "gaussians"})
        if self.gaussians is not None:
            out.gaussians = Gaussians(**{k: conv(v) for k, v in vars(self.gaussians).items()})
        return out
