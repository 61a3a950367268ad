"""Synthetic scenes with exact ground truth: a textured room with boxes and spheres, ray cast.

Pure numpy.  Every pixel's ray goes through its centre (i + 0.5, j + 0.5) with the scene's K,
hits the nearest surface, and gives the exact z-depth, a shaded procedural texture colour and
nothing else (closed rooms: every ray hits something, no background).  The cameras, depth and
surface are exact, so tests can check geometry end to end; the training issue uses the same
scenes.  Conventions: ``docs/conventions.md``.

    scene = make_scene("room", num_views=6, height=126, width=168, seed=0)
    rec = scene.to_reconstruction()          # the ground truth as a Reconstruction
    pts = scene.sample_surface(10000)        # points on the true surface
    d = scene.distance_to_surface(points)    # exact unsigned distance to it
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from . import conventions as conv
from .reconstruction import Reconstruction


# --------------------------------------------------------------------------- primitives


@dataclass
class Room:
    """The inside of an axis-aligned box ``lo``..``hi`` (floor at y = hi[1]: the world is
    OpenCV-like, y pointing down)."""

    lo: np.ndarray
    hi: np.ndarray
    color: Tuple[float, float, float] = (0.8, 0.75, 0.7)

    def intersect(self, o: np.ndarray, d: np.ndarray):
        with np.errstate(divide="ignore", invalid="ignore"):
            t_hi = np.where(d > 0, (self.hi - o) / d, np.inf)
            t_lo = np.where(d < 0, (self.lo - o) / d, np.inf)
        t_axis = np.minimum(t_hi, t_lo)  # (M, 3): exit through each axis' wall
        axis = np.argmin(t_axis, -1)
        t = np.take_along_axis(t_axis, axis[:, None], -1)[:, 0]
        normal = np.zeros_like(d)
        sign = np.where(np.take_along_axis(d, axis[:, None], -1)[:, 0] > 0, -1.0, 1.0)
        normal[np.arange(len(d)), axis] = sign  # pointing into the room
        return t, normal

    def distance(self, p: np.ndarray) -> np.ndarray:
        inside = np.minimum(p - self.lo, self.hi - p)  # (M, 3)
        q = np.abs(p - (self.lo + self.hi) / 2) - (self.hi - self.lo) / 2
        outside = np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
        return np.where(np.all(inside >= 0, -1), inside.min(-1), np.abs(outside))

    def areas(self) -> np.ndarray:
        s = self.hi - self.lo
        return np.array([s[1] * s[2], s[1] * s[2], s[0] * s[2], s[0] * s[2], s[0] * s[1], s[0] * s[1]])

    def sample(self, n: int, rng) -> np.ndarray:
        return _sample_box_faces(self.lo, self.hi, np.eye(3), np.zeros(3), n, rng)


@dataclass
class Box:
    """A box with half sizes ``half``, rotated by ``rot`` (box-to-world) about ``centre``."""

    centre: np.ndarray
    half: np.ndarray
    rot: np.ndarray
    color: Tuple[float, float, float] = (0.6, 0.3, 0.2)

    def intersect(self, o: np.ndarray, d: np.ndarray):
        ol = (o - self.centre) @ self.rot  # world -> box frame (R^T x)
        dl = d @ self.rot
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-self.half - ol) / dl
            t2 = (self.half - ol) / dl
        tmin = np.nanmax(np.minimum(t1, t2), -1)
        tmax = np.nanmin(np.maximum(t1, t2), -1)
        hit = (tmax >= tmin) & (tmin > 1e-9)
        t = np.where(hit, tmin, np.inf)
        pl = ol + dl * np.where(hit, tmin, 0)[:, None]
        axis = np.argmax(np.abs(pl) / self.half, -1)
        nl = np.zeros_like(pl)
        nl[np.arange(len(pl)), axis] = np.sign(pl[np.arange(len(pl)), axis])
        return t, nl @ self.rot.T

    def distance(self, p: np.ndarray) -> np.ndarray:
        q = np.abs((p - self.centre) @ self.rot) - self.half
        return np.abs(np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0))

    def areas(self) -> np.ndarray:
        s = 2 * self.half
        return np.array([s[1] * s[2], s[1] * s[2], s[0] * s[2], s[0] * s[2], s[0] * s[1], s[0] * s[1]])

    def sample(self, n: int, rng) -> np.ndarray:
        return _sample_box_faces(-self.half, self.half, self.rot, self.centre, n, rng)


@dataclass
class Sphere:
    centre: np.ndarray
    radius: float
    color: Tuple[float, float, float] = (0.2, 0.4, 0.7)

    def intersect(self, o: np.ndarray, d: np.ndarray):
        oc = o - self.centre
        a = (d * d).sum(-1)
        b = 2 * (oc * d).sum(-1)
        c = (oc * oc).sum(-1) - self.radius**2
        disc = b * b - 4 * a * c
        sq = np.sqrt(np.maximum(disc, 0))
        t = (-b - sq) / (2 * a)
        t = np.where((disc >= 0) & (t > 1e-9), t, np.inf)
        p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
        return t, (p - self.centre) / self.radius

    def distance(self, p: np.ndarray) -> np.ndarray:
        return np.abs(np.linalg.norm(p - self.centre, axis=-1) - self.radius)

    def areas(self) -> np.ndarray:
        return np.array([4 * math.pi * self.radius**2])

    def sample(self, n: int, rng) -> np.ndarray:
        v = rng.normal(size=(n, 3))
        return self.centre + self.radius * v / np.linalg.norm(v, axis=1, keepdims=True)


def _sample_box_faces(lo, hi, rot, centre, n, rng) -> np.ndarray:
    s = hi - lo
    areas = np.array([s[1] * s[2], s[1] * s[2], s[0] * s[2], s[0] * s[2], s[0] * s[1], s[0] * s[1]])
    face = rng.choice(6, size=n, p=areas / areas.sum())
    p = lo + rng.random((n, 3)) * s
    axis, side = face // 2, face % 2
    p[np.arange(n), axis] = np.where(side == 0, lo[axis], hi[axis])
    return p @ rot.T + centre


# --------------------------------------------------------------------------- scene


@dataclass
class SyntheticScene:
    """Rendered views of a scene with exact ground truth (see the module docstring)."""

    images: np.ndarray  # (N, H, W, 3) uint8
    depth: np.ndarray  # (N, H, W) float32 z-depth (exact)
    extrinsics: np.ndarray  # (N, 3, 4) OpenCV world-to-camera
    intrinsics: np.ndarray  # (N, 3, 3) pixels, continuous coordinates
    primitives: List = field(default_factory=list)
    seed: int = 0

    @property
    def extent(self) -> float:
        """Diagonal of the scene's bounding box."""
        room = self.primitives[0]
        return float(np.linalg.norm(room.hi - room.lo))

    def sample_surface(self, n: int, seed: int = 0) -> np.ndarray:
        """(n, 3) points on the true surface, uniform by area."""
        rng = np.random.default_rng(seed)
        areas = np.array([p.areas().sum() for p in self.primitives])
        counts = rng.multinomial(n, areas / areas.sum())
        return np.concatenate([p.sample(int(c), rng) for p, c in zip(self.primitives, counts)])

    def distance_to_surface(self, points: np.ndarray) -> np.ndarray:
        """(M,) exact unsigned distance of world points to the nearest surface."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        return np.min(np.stack([prim.distance(p) for prim in self.primitives]), 0)

    def to_reconstruction(self, conf: Optional[np.ndarray] = None) -> Reconstruction:
        """The ground truth as a Reconstruction (model "ground-truth")."""
        return Reconstruction(images=self.images, depth=self.depth, extrinsics=self.extrinsics,
                              intrinsics=self.intrinsics, conf=conf, model="ground-truth",
                              image_names=[f"view_{i:04d}" for i in range(len(self.images))],
                              options={"camera_source": "input", "synthetic_seed": self.seed})

    def ray_map(self, h: Optional[int] = None, w: Optional[int] = None) -> np.ndarray:
        """(N, h, w, 6) exact rays in DA3's ray-map layout: world direction through each cell
        centre (channels 0-2, z-normalised in the camera frame) and the camera centre (3-5).
        The h x w grid covers the image; by default the image's own resolution."""
        n, hh, ww = self.depth.shape
        h, w = h or hh, w or ww
        v, u = np.meshgrid((np.arange(h) + 0.5) * hh / h, (np.arange(w) + 0.5) * ww / w, indexing="ij")
        pix = np.stack([u, v, np.ones_like(u)], -1)
        out = np.zeros((n, h, w, 6))
        c2w = conv.w2c_to_c2w(self.extrinsics)
        for i in range(n):
            cam = pix @ np.linalg.inv(self.intrinsics[i]).T
            out[i, ..., :3] = cam @ c2w[i, :3, :3].T
            out[i, ..., 3:] = c2w[i, :3, 3]
        return out


def _look_at(centre: np.ndarray, target: np.ndarray, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV world-to-camera (3, 4) of a camera at ``centre`` looking at ``target``
    (image up = world ``up``; the world's y points down, so up is -y)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(-np.asarray(up), z)  # image rows grow downwards: camera y ~ world down
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    return np.concatenate([r, (-r @ centre)[:, None]], 1)


def _rotation(rng) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _texture(p: np.ndarray, prim: int, base: np.ndarray, freq: float, rng_phase: np.ndarray) -> np.ndarray:
    """Procedural colour at world points: checker x stripes x smooth variation, per primitive."""
    checker = ((np.floor(p[:, 0] * freq) + np.floor(p[:, 1] * freq) + np.floor(p[:, 2] * freq)) % 2)
    stripes = 0.5 + 0.5 * np.sin(p @ rng_phase[:3] * 7.0 + rng_phase[3])
    tint = 0.5 + 0.5 * np.sin(p[:, :, None] * np.array([1.3, 2.1, 3.7]) + rng_phase[None, None, :3]).mean(1)
    return base * (0.45 + 0.35 * checker)[:, None] * (0.7 + 0.3 * stripes)[:, None] + 0.25 * tint


def render(primitives, extrinsics: np.ndarray, intrinsics: np.ndarray, height: int, width: int,
           seed: int = 0, light=(0.4, 1.0, 0.3)):
    """Ray cast ``primitives`` -> (images uint8 (N,H,W,3), z-depth float32 (N,H,W)).

    ``light`` is the direction the light travels (downwards by default: +y is down)."""
    n = len(extrinsics)
    rng = np.random.default_rng(seed + 1000)
    phases = [rng.uniform(0, 2 * math.pi, 4) * np.array([0.3, 0.3, 0.3, 1.0]) for _ in primitives]
    freqs = [rng.uniform(2.0, 5.0) for _ in primitives]
    light = np.asarray(light, float)
    light = light / np.linalg.norm(light)
    u, v = conv.pixel_centres(height, width)
    pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    images = np.zeros((n, height, width, 3), np.uint8)
    depth = np.zeros((n, height, width), np.float32)
    c2w = conv.w2c_to_c2w(extrinsics)
    for i in range(n):
        d = (pix @ np.linalg.inv(intrinsics[i]).T) @ c2w[i, :3, :3].T  # z = 1 in the camera frame
        o = np.broadcast_to(c2w[i, :3, 3], d.shape)
        best_t = np.full(len(d), np.inf)
        best_n = np.zeros_like(d)
        best_k = np.full(len(d), -1)
        for k, prim in enumerate(primitives):
            t, nrm = prim.intersect(o, d)
            closer = t < best_t
            best_t = np.where(closer, t, best_t)
            best_n[closer] = nrm[closer]
            best_k[closer] = k
        p = o + d * best_t[:, None]
        rgb = np.zeros_like(p)
        for k, prim in enumerate(primitives):
            m = best_k == k
            if m.any():
                rgb[m] = _texture(p[m], k, np.asarray(prim.color), freqs[k], phases[k])
        shade = 0.35 + 0.65 * np.clip(-(best_n @ light), 0, 1)
        rgb = rgb * shade[:, None]
        images[i] = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).reshape(height, width, 3)
        depth[i] = best_t.reshape(height, width)  # the ray has z = 1: t is the z-depth
    return images, depth


def make_scene(kind: str = "room", num_views: int = 6, height: int = 126, width: int = 168,
               fov_deg: float = 60.0, seed: int = 0, num_objects: int = 4, arc_deg: float = 90.0) -> SyntheticScene:
    """A random room (about 8 x 3 x 8 units) with boxes and spheres on the floor.

    kind: "room" -- cameras on an arc of ``arc_deg`` degrees around the room centre, looking
    at it; "inside" -- cameras at the centre turning around (outward views of the walls).
    """
    if kind not in ("room", "inside"):
        raise ValueError(f"kind: expected 'room' or 'inside', got {kind!r}")
    if num_views < 1 or height < 2 or width < 2:
        raise ValueError("num_views, height and width must be positive")
    rng = np.random.default_rng(seed)
    half = np.array([4.0, 1.5, 4.0]) * rng.uniform(0.85, 1.15, 3)
    room = Room(lo=-half, hi=half, color=tuple(rng.uniform(0.5, 0.9, 3)))
    prims: List = [room]
    floor = half[1]
    for j in range(num_objects):
        pos = rng.uniform(-1.6, 1.6, 2)
        if j % 2 == 0:
            h = rng.uniform(0.3, 0.7, 3)
            prims.append(Box(centre=np.array([pos[0], floor - h[1], pos[1]]), half=h, rot=_rotation(rng),
                             color=tuple(rng.uniform(0.2, 0.9, 3))))
        else:
            r = rng.uniform(0.3, 0.6)
            prims.append(Sphere(centre=np.array([pos[0], floor - r, pos[1]]), radius=r, color=tuple(rng.uniform(0.2, 0.9, 3))))
    f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
    k = np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    exts = []
    start = rng.uniform(0, 2 * math.pi)
    for i in range(num_views):
        a = start + math.radians(arc_deg) * (i / max(1, num_views - 1) - 0.5)
        if kind == "room":
            centre = np.array([3.0 * math.sin(a), rng.uniform(-0.6, -0.2), 3.0 * math.cos(a)])
            target = np.array([0.0, floor - 0.6, 0.0]) + rng.normal(0, 0.1, 3)
        else:
            centre = rng.normal(0, 0.05, 3) + np.array([0, -0.3, 0])
            target = centre + np.array([math.sin(a), 0.15, math.cos(a)])
        exts.append(_look_at(centre, target))
    ext = np.stack(exts)
    ks = np.tile(k, (num_views, 1, 1))
    images, depth = render(prims, ext, ks, height, width, seed=seed)
    return SyntheticScene(images=images, depth=depth, extrinsics=ext, intrinsics=ks, primitives=prims, seed=seed)
