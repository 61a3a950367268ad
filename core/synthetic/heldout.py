"""Evaluation-only scene families (issue 19): scenes that training never produces.

A model trained on the generators of :mod:`.scene` and :mod:`.randomized` (rooms of boxes,
spheres and flat panels, ray cast, Lambert-lit solid textures) is scored here on scenes of
other primitives, other shading and other textures, made by code that shares nothing with
those generators (its own cameras, geometry, intersection, textures and lighting):

* ``terrain`` (:mod:`.heldout_terrain`): an outdoor heightfield of summed ridged sinusoids
  under a sky (depth 0 there), cameras walking or flying over it; slope- and height-banded
  materials (grass, rock, sand, snow) with cellular (Worley) texture, sky-dome + sun
  lighting and aerial-perspective haze; exact hits by conservative marching and Newton
  refinement on the analytic height.
* ``shapes`` (:mod:`.heldout_shapes`): a round hall (cylindrical wall, floor and ceiling) with
  tori, capped cylinders, capsules and staircases, sphere traced on exact signed distance
  functions; polka-dot, brick, wood-ring, marble and Voronoi textures, two point lights with
  Blinn-Phong highlights and SDF ambient occlusion.

Both give exact z-depth (ray parameter with camera-frame z = 1, refined to ~1e-9 relative)
and exact OpenCV cameras, so depth reprojects between views.

    scene = make_heldout_scene("terrain", seed=0, num_views=4, height=126, width=168)
    scenes = heldout_family("shapes", count=8, views=4, height=378, width=504)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np

from .. import conventions as conv

FAMILIES = ("terrain", "shapes")


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


def make_heldout_scene(family: str, seed: int = 0, num_views: int = 4, height: int = 126,
                       width: int = 168) -> HeldoutScene:
    """One scene of ``family`` ("terrain" or "shapes"), deterministic in ``seed``."""
    if family == "terrain":
        from .heldout_terrain import make_terrain_scene

        return make_terrain_scene(seed, num_views, height, width)
    if family == "shapes":
        from .heldout_shapes import make_shapes_scene

        return make_shapes_scene(seed, num_views, height, width)
    raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")


def heldout_family(family: str, count: int = 8, views: int = 4, height: int = 126, width: int = 168,
                   seed: int = 2000) -> List[HeldoutScene]:
    """``count`` scenes of ``family`` with seeds ``seed``, ``seed + 1``, ..."""
    if count < 1 or views < 1:
        raise ValueError(f"count, views: expected >= 1, got {count}, {views}")
    return [make_heldout_scene(family, seed + i, views, height, width) for i in range(count)]


__all__ = ["FAMILIES", "HeldoutScene", "camera_towards", "pinhole", "world_rays", "hash3", "to_uint8",
           "make_heldout_scene", "heldout_family"]
