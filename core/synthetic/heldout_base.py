"""What the evaluation-only families share (:mod:`.heldout`): the scene they return, their
cameras and pixel rays, a lattice hash and the output transfer curve.  Nothing here is shared
with the training generators (:mod:`.scene`, :mod:`.randomized`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .. import conventions as conv


@dataclass
class HeldoutScene:
    """Rendered views with exact ground truth: images (N, H, W, 3) uint8, z-depth (N, H, W)
    float32 (0: sky), OpenCV world-to-camera (N, 3, 4), K (N, 3, 3) in pixels."""

    images: np.ndarray
    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    family: str
    seed: int
    cast: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None
    """The family's own ray caster: (origin (3,), directions (M, 3)) -> ray parameter (M,) of
    the first hit (inf: none), for checks of the ground truth."""

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


def camera_towards(centre: np.ndarray, forward: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """(3, 4) OpenCV world-to-camera at ``centre`` looking along ``forward``, image "up"
    towards world -y (the scene worlds here have y pointing down), rolled by ``roll_rad``."""
    z = np.asarray(forward, np.float64)
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.stack([x, y, z])
    return np.concatenate([rot, (-rot @ np.asarray(centre, np.float64))[:, None]], 1)


def pinhole(height: int, width: int, fov_deg: float) -> np.ndarray:
    """K with the field of view across the longer side and the principal point at the centre."""
    f = (max(height, width) / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def world_rays(w2c: np.ndarray, k: np.ndarray, height: int, width: int):
    """(origin (3,), directions (H*W, 3)) of the pixel centres, camera-frame z = 1."""
    u, v = conv.pixel_centres(height, width)
    pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    rot = w2c[:3, :3]
    return -rot.T @ w2c[:3, 3], (pix @ np.linalg.inv(k).T) @ rot


def hash3(p: np.ndarray) -> np.ndarray:
    """(M, 3) pseudo-random numbers in [0, 1) from integer lattice points (M, 3)."""
    q = p.astype(np.float64)
    a = np.stack([q @ np.array([127.1, 311.7, 74.7]), q @ np.array([269.5, 183.3, 246.1]),
                  q @ np.array([113.5, 271.9, 124.6])], -1)
    return np.mod(np.sin(a) * 43758.5453123, 1.0)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Linear RGB -> sRGB-like 8 bit (gamma 2.2)."""
    return (np.clip(rgb, 0, 1) ** (1 / 2.2) * 255).round().astype(np.uint8)


__all__ = ["HeldoutScene", "camera_towards", "pinhole", "world_rays", "hash3", "to_uint8"]
