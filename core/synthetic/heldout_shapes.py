"""The ``shapes`` evaluation family: a round hall of tori, cylinders, capsules and stairs,
sphere traced on exact signed distance functions (see :mod:`.heldout`).

The world (y down) is a cylindrical hall: floor ``y = 0``, ceiling ``y = -H``, wall at radius
``R``; in it stand tori (upright or lying), capped cylinders, capsules and staircases (a
union of step blocks).  The scene's signed distance is the minimum of the pieces' exact ones
(the hall's is the distance to its inside).  A ray ``o + t d`` (camera z = 1) advances by
``sdf / |d|`` until ``sdf < 1e-4 (1 + t)``, then three Newton steps on ``sdf`` along the ray
(gradient by central differences) land on the surface.

Shading: two point lights with inverse-square fall-off, Blinn-Phong highlights (view-
dependent, unlike the training generators' Lambert), a hemisphere ambient term and ambient
occlusion from five SDF samples along the normal.  Textures (3-D, procedural): polka dots,
bricks, wood rings, marble veins and Voronoi cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np

from .heldout_base import HeldoutScene, camera_towards, hash3, pinhole, to_uint8, world_rays

TEXTURES = ("dots", "bricks", "wood", "marble", "voronoi")
_TRACE_ITERS = 300


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _sd_torus(p, big, small):
    return np.hypot(np.hypot(p[:, 0], p[:, 2]) - big, p[:, 1]) - small


def _sd_cylinder(p, half_h, r):
    d = np.stack([np.hypot(p[:, 0], p[:, 2]) - r, np.abs(p[:, 1]) - half_h], 1)
    return np.minimum(d.max(1), 0) + np.linalg.norm(np.maximum(d, 0), axis=1)


def _sd_capsule(p, half_h, r):
    q = p.copy()
    q[:, 1] = p[:, 1] - np.clip(p[:, 1], -half_h, half_h)
    return np.linalg.norm(q, axis=1) - r


def _sd_block(p, half):
    q = np.abs(p) - half
    return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)


@dataclass
class _Piece:
    sdf: Callable[[np.ndarray], np.ndarray]  # local point (M, 3) -> signed distance
    centre: np.ndarray
    rot: np.ndarray  # local-to-world
    texture: str
    colours: Tuple[np.ndarray, np.ndarray]
    scale: float
    gloss: float
    radius: float  # bounding radius (placement)

    def distance(self, p: np.ndarray) -> np.ndarray:
        return self.sdf((p - self.centre) @ self.rot)


def _staircase(rng) -> Tuple[Callable, float]:
    steps = int(rng.integers(3, 7))
    rise, run, width = rng.uniform(0.12, 0.25), rng.uniform(0.2, 0.35), rng.uniform(0.5, 1.0)
    blocks = []
    for s in range(steps):  # step s: from the floor up to (s + 1) rise, its run along +x
        half = np.array([run / 2, (s + 1) * rise / 2, width / 2])
        blocks.append((np.array([(s - steps / 2 + 0.5) * run, -(s + 1) * rise / 2, 0.0]), half))

    def sdf(p):
        return np.min([_sd_block(p - c, h) for c, h in blocks], 0)

    return sdf, float(math.hypot(steps * run / 2, width / 2))


class _Hall:
    def __init__(self, rng: np.random.Generator) -> None:
        self.radius = rng.uniform(4.0, 7.0)
        self.height = rng.uniform(2.5, 4.5)
        self.pieces: List[_Piece] = []
        self.wall = (rng.choice(TEXTURES), self._pair(rng), rng.uniform(0.5, 2.0))
        self.floor = (rng.choice(TEXTURES), self._pair(rng), rng.uniform(0.5, 2.0))
        for _ in range(int(rng.integers(4, 9))):
            for _attempt in range(50):
                kind = rng.choice(["torus", "cylinder", "capsule", "stairs"])
                rot = np.eye(3)
                if kind == "torus":
                    big, small = rng.uniform(0.35, 0.8), rng.uniform(0.08, 0.25)
                    sdf = (lambda b, s: (lambda p: _sd_torus(p, b, s)))(big, small)
                    rot = _rotation(rng) if rng.uniform() < 0.5 else np.eye(3)
                    rad, lift = big + small, big + small if rng.uniform() < 0.6 else small
                    if not np.allclose(rot, np.eye(3)):
                        lift = big + small + rng.uniform(0, 0.8)
                elif kind == "cylinder":
                    hh, r = rng.uniform(0.2, 1.2), rng.uniform(0.15, 0.6)
                    sdf = (lambda a, b: (lambda p: _sd_cylinder(p, a, b)))(hh, r)
                    rad, lift = r, hh
                elif kind == "capsule":
                    hh, r = rng.uniform(0.1, 0.6), rng.uniform(0.12, 0.4)
                    sdf = (lambda a, b: (lambda p: _sd_capsule(p, a, b)))(hh, r)
                    rad, lift = r, hh + r + rng.choice([0.0, rng.uniform(0.2, 0.8)])
                else:
                    sdf, rad = _staircase(rng)
                    lift = 0.0
                yaw = rng.uniform(0, 2 * math.pi)
                spin = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
                pos = rng.uniform(-1, 1, 2) * 0.45 * self.radius
                clear = np.hypot(*pos) + rad < 0.6 * self.radius  # the cameras stand further out
                if clear and all(np.hypot(*(pos - q.centre[[0, 2]])) > rad + q.radius + 0.1 for q in self.pieces):
                    break
            else:
                continue
            self.pieces.append(_Piece(sdf=sdf, centre=np.array([pos[0], -lift, pos[1]]), rot=spin @ rot,
                                      texture=str(rng.choice(TEXTURES)), colours=self._pair(rng),
                                      scale=float(rng.uniform(1.5, 6.0)), gloss=float(rng.uniform(0.0, 0.5)),
                                      radius=float(rad)))

    @staticmethod
    def _pair(rng) -> Tuple[np.ndarray, np.ndarray]:
        a = rng.uniform(0.1, 0.95, 3)
        return a, np.clip(a[::-1] * rng.uniform(0.3, 0.9) + rng.uniform(0, 0.3, 3), 0, 1)

    def parts(self, p: np.ndarray) -> np.ndarray:
        """(M, K) signed distances of every part: floor, ceiling, wall, then the pieces."""
        hall = [-p[:, 1], p[:, 1] + self.height, self.radius - np.hypot(p[:, 0], p[:, 2])]  # the room is y < 0
        return np.stack(hall + [q.distance(p) for q in self.pieces], 1)

    def sdf(self, p: np.ndarray) -> np.ndarray:
        return self.parts(p).min(1)

    def normal(self, p: np.ndarray) -> np.ndarray:
        e = 1e-5
        g = np.stack([self.sdf(p + e * ax) - self.sdf(p - e * ax) for ax in np.eye(3)], 1)
        return g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)


def _trace(hall: _Hall, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    m = len(d)
    norm = np.linalg.norm(d, axis=1)
    t = np.zeros(m)
    out = np.full(m, np.inf)
    active = np.arange(m)
    for _ in range(_TRACE_ITERS):
        if len(active) == 0:
            break
        s = hall.sdf(o + d[active] * t[active, None])
        done = s < 1e-4 * (1 + t[active])
        out[active[done]] = t[active[done]]
        active = active[~done]
        t[active] += s[~done] / norm[active]
    out[active] = t[active]  # not converged in the budget (grazing): the last safe point
    hit = np.isfinite(out)
    tt, dd = out[hit], d[hit]
    for _ in range(3):  # Newton on sdf(o + t d) = 0
        p = o + dd * tt[:, None]
        s = hall.sdf(p)
        slope = (hall.normal(p) * dd).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(slope < -1e-3, -s / slope, 0.0)
        tt = tt + np.clip(step, -1e-2 * (1 + tt), 1e-2 * (1 + tt))
    out[hit] = tt
    return out


def _texture(kind: str, p: np.ndarray, n: np.ndarray, colours, scale: float) -> np.ndarray:
    a, b = colours
    q = p * scale
    if kind == "dots":
        f = q - np.floor(q) - 0.5
        mix = (np.linalg.norm(f, axis=1) < 0.3).astype(np.float64)
    elif kind == "bricks":
        axis = np.argmax(np.abs(n), 1)  # the plane the surface mostly lies in
        u = np.where(axis == 0, q[:, 2], q[:, 0])
        v = np.where(axis == 1, q[:, 2], q[:, 1]) * 2
        row = np.floor(v)
        u = u + 0.5 * (row % 2)
        mortar = (np.abs(u - np.round(u)) < 0.06) | (np.abs(v - np.round(v)) < 0.1)
        mix = 1.0 - mortar.astype(np.float64) * (0.6 + 0.4 * hash3(np.stack([np.floor(u), row, row], 1))[:, 0])
    elif kind == "wood":
        r = np.hypot(q[:, 0], q[:, 2]) + 0.3 * np.sin(q[:, 1] * 1.7)
        mix = 0.5 + 0.5 * np.sin(r * 6.0)
    elif kind == "marble":
        turb = np.abs(np.sin(q @ np.array([1.3, 2.1, 0.7]))) + 0.5 * np.abs(np.sin(q @ np.array([3.1, -1.7, 2.3])))
        mix = np.clip(np.abs(np.sin(q[:, 0] + 2.5 * turb)) ** 0.3, 0, 1)
    else:  # voronoi: cell colour varies, dark cell borders
        base = np.floor(q)
        best = np.full((len(q), 2), np.inf)
        tone = np.zeros(len(q))
        for off in np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1]), -1).reshape(-1, 3):
            cell = base + off
            h = hash3(cell)
            dist = np.linalg.norm(cell + h - q, axis=1)
            closer = dist < best[:, 0]
            tone = np.where(closer, h[:, 0], tone)
            best = np.where(closer[:, None], np.stack([dist, best[:, 0]], 1),
                            np.stack([best[:, 0], np.minimum(best[:, 1], dist)], 1))
        mix = tone * np.clip((best[:, 1] - best[:, 0]) * 8, 0, 1)
    return a + (b - a) * mix[:, None]


def make_shapes_scene(seed: int, num_views: int = 4, height: int = 126, width: int = 168) -> HeldoutScene:
    rng = np.random.default_rng([int(seed), 777])
    hall = _Hall(rng)
    k = pinhole(height, width, rng.uniform(45, 90))
    arc = math.radians(rng.uniform(40, 120))
    start = rng.uniform(0, 2 * math.pi)
    ring = rng.uniform(0.65, 0.85) * hall.radius
    eye = rng.uniform(0.6, min(2.0, 0.7 * hall.height))
    target = np.array([0.0, -rng.uniform(0.2, 0.8), 0.0])
    exts = []
    for i in range(num_views):
        a = start + arc * (i / max(1, num_views - 1) - 0.5)
        c = np.array([ring * math.sin(a), -eye + rng.normal(0, 0.05), ring * math.cos(a)])
        exts.append(camera_towards(c, target + rng.normal(0, 0.3, 3) - c, rng.normal(0, 0.05)))
    ext = np.stack(exts)
    lights = [(np.array([rng.uniform(-0.5, 0.5) * hall.radius, -0.9 * hall.height, rng.uniform(-0.5, 0.5) * hall.radius]),
               rng.uniform(0.6, 1.0, 3) * rng.uniform(4, 10)) for _ in range(2)]
    images = np.zeros((num_views, height, width, 3), np.uint8)
    depth = np.zeros((num_views, height, width), np.float32)
    for i in range(num_views):
        o, d = world_rays(ext[i], k, height, width)
        t = _trace(hall, o, d)
        p = o + d * t[:, None]
        n = hall.normal(p)
        view = d / np.linalg.norm(d, axis=1, keepdims=True)
        n = np.where(((n * view).sum(1) > 0)[:, None], -n, n)
        which = hall.parts(p).argmin(1)
        albedo = np.zeros((len(p), 3))
        gloss = np.zeros(len(p))
        for j in range(3 + len(hall.pieces)):
            m = which == j
            if not m.any():
                continue
            if j < 3:
                tex, cols, sc = hall.floor if j == 0 else hall.wall
                albedo[m] = _texture(tex, p[m], n[m], cols, sc)
                gloss[m] = 0.05
            else:
                q = hall.pieces[j - 3]
                albedo[m] = _texture(q.texture, (p[m] - q.centre) @ q.rot, n[m] @ q.rot, q.colours, q.scale)
                gloss[m] = q.gloss
        occ = np.ones(len(p))
        for s in range(1, 6):
            h = 0.06 * s
            occ -= (h - hall.sdf(p + n * h)) / (2.0 ** s) * 2.5
        light = (0.25 + 0.1 * (-n[:, 1:2])) * np.clip(occ, 0.2, 1)[:, None]
        for pos, col in lights:
            to = pos - p
            r2 = (to * to).sum(1, keepdims=True)
            ldir = to / np.sqrt(r2)
            lam = np.clip((n * ldir).sum(1, keepdims=True), 0, None)
            half = ldir - view
            half /= np.maximum(np.linalg.norm(half, axis=1, keepdims=True), 1e-12)
            spec = np.clip((n * half).sum(1, keepdims=True), 0, None) ** 40 * gloss[:, None]
            light = light + col * (lam + spec) / r2
        images[i] = to_uint8((albedo * light).reshape(height, width, 3))
        depth[i] = t.reshape(height, width)
    return HeldoutScene(images=images, depth=depth, extrinsics=ext, intrinsics=np.tile(k, (num_views, 1, 1)),
                        family="shapes", seed=int(seed), cast=lambda o, d: _trace(hall, o, d))


__all__ = ["TEXTURES", "make_shapes_scene"]
