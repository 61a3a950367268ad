"""The ``terrain`` evaluation family: an outdoor heightfield under a sky (see :mod:`.heldout`).

The ground is ``y = ground(x, z) = base - h(x, z)`` (y points down), ``h`` a sum of ridged
sinusoids ``a_k (1 - |sin(w_k . (x, z) + phi_k)|)`` over octaves, inside a disc of radius
``RADIUS``; rays that leave the disc or rise above the highest peak see the sky (depth 0).

A ray ``o + t d`` (camera z = 1) is marched conservatively: with ``f(t)`` the ray's height
above the ground, ``f`` changes by at most ``|d_y| + L |d_xz|`` per unit of ``t`` (``L`` the
sum of ``a_k |w_k|``, a Lipschitz bound of ``h``), so steps of ``f / (|d_y| + L |d_xz|)``
never cross the surface.  Near it, Newton steps on the analytic ``f`` and its derivative
finish the hit (bracketed, so a step never jumps past a crossing).
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

from .heldout_base import HeldoutScene, camera_towards, hash3, pinhole, to_uint8, world_rays

RADIUS = 90.0
_MARCH_ITERS = 400


class _Terrain:
    def __init__(self, rng: np.random.Generator) -> None:
        octaves = 7
        self.amp = np.array([rng.uniform(5.0, 10.0) * 0.5**k for k in range(octaves)])
        freq = np.array([rng.uniform(0.04, 0.07) * 2.0**k for k in range(octaves)])
        ang = rng.uniform(0, 2 * math.pi, octaves)
        self.w = np.stack([freq * np.cos(ang), freq * np.sin(ang)], 1)  # (K, 2)
        self.phase = rng.uniform(0, 2 * math.pi, octaves)
        self.ridged = rng.uniform(size=octaves) < 0.5
        self.base = 0.0
        self.lip = float((self.amp * np.linalg.norm(self.w, axis=1)).sum())
        self.top = self.base - float(self.amp.sum())  # the highest possible ground (smallest y)

    def height(self, x: np.ndarray, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ground y at (x, z) and its partial derivatives dy/dx, dy/dz."""
        arg = x[:, None] * self.w[:, 0] + z[:, None] * self.w[:, 1] + self.phase  # (M, K)
        s, c = np.sin(arg), np.cos(arg)
        val = np.where(self.ridged, 1 - np.abs(s), 0.5 + 0.5 * s)
        dval = np.where(self.ridged, -np.sign(s) * c, 0.5 * c)
        h = val @ self.amp
        dh = dval * self.amp  # (M, K)
        return self.base - h, -(dh @ self.w[:, 0]), -(dh @ self.w[:, 1])


def _march(ter: _Terrain, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ray parameter of the first ground hit (inf: sky)."""
    m = len(d)
    t = np.zeros(m)
    # start where the ray enters the slab of possible ground heights
    dy = d[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_top = np.where(dy > 0, (ter.top - o[1]) / dy, 0.0)
    t = np.maximum(t, np.nan_to_num(t_top, nan=0.0))
    bound = np.abs(dy) + ter.lip * np.hypot(d[:, 0], d[:, 2])
    # rays that never reach the slab (going up above every peak) and rays that leave the disc
    horiz = np.hypot(d[:, 0], d[:, 2])
    with np.errstate(divide="ignore"):
        t_far = np.where(horiz > 0, (RADIUS + np.hypot(o[0], o[2])) / horiz, np.inf)
    out = np.full(m, np.inf)
    active = np.flatnonzero((o[1] >= ter.top) | (dy > 0))
    tt = t[active]
    for _ in range(_MARCH_ITERS):
        if len(active) == 0:
            break
        p = o + d[active] * tt[:, None]
        g, _, _ = ter.height(p[:, 0], p[:, 2])
        f = g - p[:, 1]  # height of the ray above the ground (>= 0 before the hit)
        done = f < 1e-4 * (1 + tt)
        gone = (tt > t_far[active]) | (np.hypot(p[:, 0], p[:, 2]) > RADIUS) | ((p[:, 1] < ter.top) & (dy[active] <= 0))
        if done.any():
            out[active[done & ~gone]] = tt[done & ~gone]
        keep = ~(done | gone)
        active, tt = active[keep], (tt + np.maximum(f, 0) / bound[active])[keep]
    # Newton on f(t) = ground(x, z) - y, from the safe side (f >= 0), kept in a bracket
    hit = np.flatnonzero(np.isfinite(out))
    lo = out[hit].copy()
    dd = d[hit]
    tt = lo.copy()
    for _ in range(12):
        p = o + dd * tt[:, None]
        g, gx, gz = ter.height(p[:, 0], p[:, 2])
        f = g - p[:, 1]
        lo = np.where(f >= 0, np.maximum(lo, tt), lo)
        df = gx * dd[:, 0] + gz * dd[:, 2] - dd[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            step = -f / df
        nxt = tt + np.where(np.isfinite(step), step, 0.0)
        tt = np.where(nxt < lo, lo, nxt)  # never behind the last point known to be above
    out[hit] = tt
    return out


def _cells(q: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Worley noise on the (x, z) plane: distance to the nearest and second nearest feature
    points of a jittered grid, (M,) each."""
    base = np.floor(q)
    best = np.full((len(q), 2), np.inf)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            cell = base + np.array([i, j])
            jit = hash3(np.concatenate([cell, np.zeros((len(q), 1))], 1))[:, :2]
            dist = np.linalg.norm(cell + jit - q, axis=1)
            best = np.sort(np.concatenate([best, dist[:, None]], 1), 1)[:, :2]
    return best[:, 0], best[:, 1]


def _ground_colour(p: np.ndarray, normal: np.ndarray, pal: np.ndarray, snow_line: float) -> np.ndarray:
    slope = -normal[:, 1]  # 1: flat ground (normal up is -y)
    f1, f2 = _cells(p[:, [0, 2]] * 0.7)
    cell = np.clip(f2 - f1, 0, 1)
    grain = hash3(np.floor(p * 9))[:, 0]
    grass = pal[0] * (0.75 + 0.35 * cell[:, None]) * (0.9 + 0.2 * grain[:, None])
    rock = pal[1] * (0.6 + 0.6 * np.clip(f1, 0, 1)[:, None])
    snow = np.array([0.92, 0.93, 0.97]) * (0.95 + 0.05 * grain[:, None])
    w_rock = np.clip((0.9 - slope) * 6, 0, 1)[:, None]
    col = grass * (1 - w_rock) + rock * w_rock
    w_snow = np.clip((snow_line - p[:, 1]) * 1.5, 0, 1)[:, None] * np.clip((slope - 0.6) * 4, 0, 1)[:, None]
    return col * (1 - w_snow) + snow * w_snow


def make_terrain_scene(seed: int, num_views: int = 4, height: int = 126, width: int = 168) -> HeldoutScene:
    rng = np.random.default_rng([int(seed), 4242])
    ter = _Terrain(rng)
    fov = rng.uniform(50, 85)
    k = pinhole(height, width, fov)
    # a walk or a low flight: forward along a heading, looking a little down and sideways
    yaw = rng.uniform(0, 2 * math.pi)
    heading = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
    side = np.array([heading[2], 0.0, -heading[0]])
    start = rng.uniform(-20, 20, 3) * [1, 0, 1]
    above = rng.uniform(1.5, 5.0)
    stride = rng.uniform(0.4, 1.2)
    look = rng.uniform(-0.4, 0.4)
    pitch = rng.uniform(0.15, 0.5)
    exts = []
    for i in range(num_views):
        c = start + heading * stride * i + side * rng.normal(0, 0.1)
        g, _, _ = ter.height(np.array([c[0]]), np.array([c[2]]))
        c[1] = g[0] - above + rng.normal(0, 0.05)
        yaw_i = look + rng.normal(0, 0.06) + 0.08 * i * rng.choice([-1, 1])
        fwd = heading * math.cos(yaw_i) + side * math.sin(yaw_i)
        fwd = fwd + np.array([0.0, pitch, 0.0])
        exts.append(camera_towards(c, fwd, rng.normal(0, 0.03)))
    ext = np.stack(exts)
    sun = rng.normal(size=3)
    sun[1] = abs(sun[1]) + 0.3
    sun = sun / np.linalg.norm(sun)  # direction of travel (downwards)
    pal = np.stack([np.array([0.25, 0.45, 0.15]) * rng.uniform(0.7, 1.3, 3),
                    np.array([0.45, 0.42, 0.4]) * rng.uniform(0.8, 1.2, 3)])
    sky_top, sky_low = np.array([0.25, 0.45, 0.85]) * rng.uniform(0.8, 1.1), np.array([0.75, 0.82, 0.9])
    haze = rng.uniform(90, 300)
    snow_line = ter.top + 0.35 * (ter.base - ter.top)
    images = np.zeros((num_views, height, width, 3), np.uint8)
    depth = np.zeros((num_views, height, width), np.float32)
    for i in range(num_views):
        o, d = world_rays(ext[i], k, height, width)
        t = _march(ter, o, d)
        hit = np.isfinite(t)
        up = np.clip(-d[:, 1] / np.linalg.norm(d, axis=1), 0, 1)[:, None]
        rgb = sky_low * (1 - up) + sky_top * up
        if hit.any():
            p = o + d[hit] * t[hit][:, None]
            _, gx, gz = ter.height(p[:, 0], p[:, 2])
            n = np.stack([-gx, np.ones_like(gx), -gz], 1)
            n = -n / np.linalg.norm(n, axis=1, keepdims=True)  # up (-y) side
            albedo = _ground_colour(p, n, pal, snow_line)
            light = 0.35 * (sky_top * (0.5 - 0.5 * n[:, 1:2]) + 0.3) + 0.9 * np.clip(-(n @ sun), 0, None)[:, None]
            dist = t[hit] * np.linalg.norm(d[hit], axis=1)
            fog = (1 - np.exp(-dist / haze))[:, None]
            rgb[hit] = albedo * light * (1 - fog) + sky_low * fog
        images[i] = to_uint8(rgb.reshape(height, width, 3))
        depth[i] = np.where(hit, t, 0).reshape(height, width)
    return HeldoutScene(images=images, depth=depth, extrinsics=ext, intrinsics=np.tile(k, (num_views, 1, 1)),
                        family="terrain", seed=int(seed), cast=lambda o, d: _march(ter, o, d))


__all__ = ["RADIUS", "make_terrain_scene"]
