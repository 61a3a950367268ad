"""Domain-randomised synthetic training scenes (issue 19): many looks, one exact geometry.

The generator of :mod:`.scene` draws rooms of one look (checker floors, two-colour solid
textures, one light, a 45-75 degree field of view at 126 x 168).  A model trained only on it
learns that look.  This one randomises, from one seed:

* **layouts**: ``room`` (a box room of random size with objects, wall panels and pillars),
  ``corridor`` (a long narrow room walked along), ``objects`` (an object-centric cluster seen
  from an orbit, in a room or in the open: background pixels get depth 0) and ``inside``
  (cameras near a room's centre turning and shifting);
* **primitives**: boxes (rotated, stacked), spheres (on the floor or floating), wall panels
  and pillars (the primitives of :mod:`.raycast`; the held-out evaluation families of
  :mod:`.heldout` use other ones);
* **materials**: ``flat`` (one colour, unlit), ``shaded`` (one colour, lit), ``textured``
  (checker / stripes / noise at a random scale) and ``noisy`` (fractal noise with strong
  fine detail); colours from a per-scene palette (hue spread, saturation, brightness);
* **lighting**: a coloured ambient term, one or two coloured directional lights and an
  optional point light with 1/r^2 fall-off (all view-independent);
* **cameras**: a horizontal field of view of the image's longer side in ``fov_range``
  (default 40-100 degrees), paths (orbit arcs of 30-360 degrees at random elevations,
  straight walks, turning in place) with roll and aim jitter;
* **photometry per view**: exposure, gamma, white balance, vignetting and sensor noise
  (applied after rendering; depth is untouched).

A scene's geometry, cameras and looks are fixed by its seed (:func:`random_scene_spec`); the
image size is chosen when rendering (:func:`render_spec_views`), so one scene serves every
training resolution and aspect ratio with exact depth and intrinsics: the focal length
follows the field of view of the longer side, the principal point is the image centre.
Depth is the exact z-depth of the nearest primitive (:func:`~.raycast.cast_rays`).

    spec = random_scene_spec(seed=3, num_views=8)
    images, depth, w2c, ks = render_spec_views(spec, [0, 2, 5], height=378, width=504)
    scene = make_randomized_scene(seed=3, num_views=4, height=126, width=168)   # a SyntheticScene
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .. import conventions as conv
from .raycast import Box, Lighting, Material, Primitive, Quad, Sphere, _pixel_rays, _texture, cast_rays, room_quads
from .scene import SceneConfig, SyntheticScene, look_at

LAYOUTS = ("room", "corridor", "objects", "inside")
SHADINGS = ("flat", "shaded", "textured", "noisy")

Vec3 = Tuple[float, float, float]


@dataclass(frozen=True)
class RandomLighting:
    """Coloured ambient + directional lights (direction of travel, colour) + an optional
    point light (position, colour x power); all view-independent."""

    ambient: Vec3 = (0.3, 0.3, 0.3)
    lights: Tuple[Tuple[Vec3, Vec3], ...] = (((0.4, 1.0, 0.3), (0.7, 0.7, 0.7)),)
    point: Optional[Tuple[Vec3, Vec3]] = None


@dataclass(frozen=True)
class Photometry:
    """Per-scene camera response; per view the exposure varies by ``exposure_jitter``."""

    exposure: float = 1.0
    exposure_jitter: float = 0.0
    gamma: float = 1.0
    white_balance: Vec3 = (1.0, 1.0, 1.0)
    noise: float = 0.0
    vignette: float = 0.0


@dataclass
class RandomSceneSpec:
    """Everything a seed fixes: primitives (with their shading modes), lights, cameras
    (world-to-camera (N, 4, 4)), field of view of the longer image side, background and
    photometry.  ``closed`` scenes have valid depth everywhere."""

    seed: int
    layout: str
    primitives: List[Primitive]
    shading: List[str]
    lighting: RandomLighting
    extrinsics: np.ndarray
    fov_deg: float
    closed: bool
    sky: Tuple[Vec3, Vec3]
    photometry: Photometry = field(default_factory=Photometry)

    @property
    def num_views(self) -> int:
        return len(self.extrinsics)

    def intrinsics(self, height: int, width: int) -> np.ndarray:
        """(3, 3) K at ``height`` x ``width``: the field of view spans the longer side."""
        f = (max(height, width) / 2) / math.tan(math.radians(self.fov_deg) / 2)
        return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


# --------------------------------------------------------------------------- looks


def _palette_colour(rng: np.random.Generator, hue: float, spread: float, sat: Tuple[float, float],
                    val: Tuple[float, float]) -> np.ndarray:
    """An RGB colour from HSV around the palette's hue."""
    h = (hue + rng.normal(0, spread)) % 1.0
    s, v = rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


class _Looks:
    """Draws materials and shading modes from one scene's palette."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.hue = rng.uniform()
        self.spread = rng.choice([0.03, 0.12, 0.5])
        lo_s = rng.uniform(0.0, 0.5)
        self.sat = (lo_s, min(1.0, lo_s + rng.uniform(0.2, 0.6)))
        lo_v = rng.uniform(0.15, 0.6)
        self.val = (lo_v, min(1.0, lo_v + rng.uniform(0.2, 0.5)))
        self.weights = rng.dirichlet(np.ones(len(SHADINGS)) * 1.5)
        self.scale = math.exp(rng.uniform(math.log(0.4), math.log(12.0)))  # texture scale of the scene

    def colour(self) -> np.ndarray:
        return _palette_colour(self.rng, self.hue, self.spread, self.sat, self.val)

    def material(self) -> Tuple[Material, str]:
        rng = self.rng
        mode = SHADINGS[int(rng.choice(len(SHADINGS), p=self.weights))]
        a, b = self.colour(), self.colour()
        if rng.uniform() < 0.5:  # contrast between the two colours
            b = np.clip(a * rng.uniform(0.2, 0.6) + rng.uniform(0, 0.2, 3), 0.02, 1.0)
        sd = rng.normal(size=3)
        scale = self.scale * math.exp(rng.normal(0, 0.5))
        if mode in ("flat", "shaded"):
            mat = Material(color_a=tuple(a), color_b=tuple(a), pattern="plain", scale=1.0,
                           detail=float(rng.uniform(0, 0.03)))
        elif mode == "textured":
            mat = Material(color_a=tuple(a), color_b=tuple(b), pattern=("checker", "stripes", "noise")[rng.integers(3)],
                           scale=scale, offset=tuple(rng.uniform(0, 10, 3)), stripe_dir=tuple(sd / np.linalg.norm(sd)),
                           detail=float(rng.uniform(0.0, 0.2)))
        else:
            mat = Material(color_a=tuple(a), color_b=tuple(b), pattern="noise", scale=scale * rng.uniform(1, 4),
                           offset=tuple(rng.uniform(0, 10, 3)), detail=float(rng.uniform(0.3, 0.6)))
        return mat, mode


def _lighting(rng: np.random.Generator, centre: np.ndarray, half: np.ndarray) -> RandomLighting:
    tint = lambda: np.clip(1 + rng.normal(0, 0.12, 3), 0.6, 1.3)  # noqa: E731
    ambient = rng.uniform(0.12, 0.6) * tint()
    lights = []
    for _ in range(int(rng.integers(1, 3))):
        d = rng.normal(size=3)
        d[1] = abs(d[1]) + rng.uniform(0.0, 1.0)  # mostly from above (+y is down)
        lights.append((tuple(d / np.linalg.norm(d)), tuple(rng.uniform(0.2, 0.9) * tint())))
    point = None
    if rng.uniform() < 0.4:
        pos = centre + rng.uniform(-0.6, 0.6, 3) * half
        pos[1] = centre[1] - 0.8 * half[1]  # near the ceiling
        point = (tuple(pos), tuple(rng.uniform(1.0, 6.0) * float(np.mean(half)) ** 2 * tint() / 4))
    return RandomLighting(ambient=tuple(ambient), lights=tuple(lights), point=point)


def _photometry(rng: np.random.Generator) -> Photometry:
    return Photometry(exposure=float(math.exp(rng.normal(0, 0.25))), exposure_jitter=float(rng.uniform(0, 0.1)),
                      gamma=float(rng.uniform(0.75, 1.3)), white_balance=tuple(np.clip(1 + rng.normal(0, 0.07, 3), 0.8, 1.2)),
                      noise=float(rng.choice([0.0, rng.uniform(0.0, 0.04)])), vignette=float(rng.uniform(0, 0.35)))


# --------------------------------------------------------------------------- layouts and cameras


def _cameras_orbit(rng, target, radius, n, elevation_deg, arc_deg, roll_deg):
    start = rng.uniform(0, 2 * math.pi)
    arc = math.radians(arc_deg)
    exts = []
    for i in range(n):
        a = start + (arc * i / n if arc_deg >= 360 else arc * (i / max(1, n - 1) - 0.5))
        el = math.radians(elevation_deg + rng.normal(0, 3))
        c = target + radius * np.array([math.cos(el) * math.sin(a), -math.sin(el), math.cos(el) * math.cos(a)])
        exts.append(_aim(c, target + rng.normal(0, 0.05 * radius, 3), rng, roll_deg))
    return exts


def _aim(centre, target, rng, roll_deg) -> np.ndarray:
    roll = math.radians(rng.normal(0, roll_deg))
    w2c = conv.as_4x4(look_at(centre, target))
    c, s = math.cos(roll), math.sin(roll)
    w2c[:3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ w2c[:3]
    return w2c


def _room_box(rng, layout) -> np.ndarray:
    if layout == "corridor":
        half = np.array([rng.uniform(1.0, 1.8), rng.uniform(1.1, 1.8), rng.uniform(5.0, 10.0)])
    elif layout == "objects":
        half = np.array([rng.uniform(4, 8), rng.uniform(1.5, 3.0), rng.uniform(4, 8)])
    else:
        half = np.array([rng.uniform(1.8, 6.0), rng.uniform(1.1, 2.5), rng.uniform(1.8, 6.0)])
    return half


def _path(rng, layout, half, n, roll_deg) -> Tuple[List[np.ndarray], np.ndarray, float]:
    """Cameras of the layout, the centre of the object area and its radius."""
    floor = half[1]
    if layout == "objects":
        spread = rng.uniform(0.6, 1.8)
        target = np.array([0.0, floor - rng.uniform(0.3, 1.0) * spread, 0.0])
        radius = rng.uniform(2.2, 3.6) * spread
        arc = rng.choice([rng.uniform(30, 180), 360.0])
        elev = rng.uniform(5, 55)
        exts = _cameras_orbit(rng, target, radius, n, elev, arc, roll_deg)
        return exts, np.array([0.0, floor, 0.0]), spread
    if layout == "room":
        target = np.array([0.0, floor - rng.uniform(0.2, 0.8), 0.0])
        radius = rng.uniform(0.45, 0.8) * min(half[0], half[2])
        height = floor - rng.uniform(0.8, 1.8 * half[1])
        exts = []
        arc = math.radians(rng.uniform(30, 150))
        start = rng.uniform(0, 2 * math.pi)
        for i in range(n):
            a = start + arc * (i / max(1, n - 1) - 0.5)
            c = np.array([radius * math.sin(a), height + rng.normal(0, 0.05), radius * math.cos(a)])
            exts.append(_aim(c, target + rng.normal(0, 0.2, 3), rng, roll_deg))
        return exts, np.array([0.0, floor, 0.0]), 0.55 * radius
    if layout == "corridor":
        z0 = -half[2] + rng.uniform(0.5, 1.5)
        length = rng.uniform(1.5, 2 * half[2] - 3.0)
        x = rng.uniform(-0.3, 0.3) * half[0]
        y = floor - rng.uniform(0.9, 1.6)
        yaw0 = rng.normal(0, 0.25) + rng.choice([0.0, rng.uniform(-1.2, 1.2)])
        exts = []
        for i in range(n):
            c = np.array([x + rng.normal(0, 0.03), y + rng.normal(0, 0.03), z0 + length * i / max(1, n - 1)])
            yaw = yaw0 + rng.normal(0, 0.05)
            exts.append(_aim(c, c + np.array([math.sin(yaw), rng.uniform(0.0, 0.3), math.cos(yaw)]), rng, roll_deg))
        return exts, np.array([0.0, floor, 0.0]), 0.0
    # inside: near the centre, turning
    arc = math.radians(rng.uniform(40, 200))
    start = rng.uniform(0, 2 * math.pi)
    base = np.array([0.0, floor - rng.uniform(1.0, 1.6), 0.0]) + rng.uniform(-0.3, 0.3, 3) * [1, 0, 1]
    shift = rng.normal(0, 0.3, 3) * [1, 0, 1]
    exts = []
    for i in range(n):
        a = start + arc * (i / max(1, n - 1) - 0.5)
        c = base + shift * (i / max(1, n - 1) - 0.5)
        exts.append(_aim(c, c + np.array([math.sin(a), rng.uniform(0.0, 0.35), math.cos(a)]), rng, roll_deg))
    return exts, np.array([0.0, floor, 0.0]), 0.0


def _objects(rng, looks: _Looks, half, floor_y, cams: np.ndarray, area_centre, area_radius, count, layout):
    """Boxes, stacked boxes, spheres (on the floor or floating) and pillars, clear of the
    cameras (bounding spheres at least 0.35 from every camera centre) and of each other."""
    prims, shading, placed = [], [], []
    lim = np.array([half[0], half[2]]) - 0.3
    for _ in range(count):
        for _attempt in range(60):
            if layout in ("objects", "room") and area_radius > 0 and rng.uniform() < 0.8:
                pos = area_centre[[0, 2]] + rng.uniform(-1, 1, 2) * area_radius
            else:
                pos = rng.uniform(-1, 1, 2) * lim
            kind = rng.choice(["box", "sphere", "stack", "float", "pillar"], p=[0.35, 0.25, 0.15, 0.1, 0.15])
            size = rng.uniform(0.15, 0.7) * (1.5 if layout == "objects" else 1.0)
            if kind == "pillar":
                hs = np.array([rng.uniform(0.1, 0.3), half[1], rng.uniform(0.1, 0.3)])
                items = [("box", np.array([pos[0], 0.0, pos[1]]), hs)]
            elif kind == "sphere":
                items = [("sphere", np.array([pos[0], floor_y - size, pos[1]]), size)]
            elif kind == "float":
                y = floor_y - size - rng.uniform(0.3, 1.5)
                items = [("sphere", np.array([pos[0], max(y, -half[1] + size + 0.05), pos[1]]), size)]
            else:
                hs = size * rng.uniform(0.4, 1.0, 3)
                items = [("box", np.array([pos[0], floor_y - hs[1], pos[1]]), hs)]
                if kind == "stack":
                    h2 = hs * rng.uniform(0.4, 0.9, 3)
                    items.append(("box", np.array([pos[0], floor_y - 2 * hs[1] - h2[1], pos[1]]), h2))
            ok = True
            for _k, c, s in items:
                r = float(np.linalg.norm(s)) if _k == "box" else float(s)
                if _k == "box" and kind == "pillar":
                    r = float(np.hypot(s[0], s[2]))
                    d = np.hypot(*(cams[:, [0, 2]] - c[[0, 2]]).T)
                else:
                    d = np.linalg.norm(cams - c, axis=1)
                if np.any(d < r + 0.35) or any(np.hypot(*(c - pc)[[0, 2]]) < r + pr + 0.02 for pc, pr in placed):
                    ok = False
                if np.any(np.abs(c[[0, 2]]) + r > half[[0, 2]]):
                    ok = False
            if ok:
                break
        else:
            continue
        for k, c, s in items:
            mat, mode = looks.material()
            if k == "box":
                yaw = rng.uniform(0, 2 * math.pi) if kind != "pillar" else 0.0
                rot = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
                prims.append(Box(centre=c, half=s, rot=rot, material=mat))
                placed.append((c, float(np.hypot(s[0], s[2]))))
            else:
                prims.append(Sphere(centre=c, radius=s, material=mat))
                placed.append((c, float(s)))
            shading.append(mode)
    return prims, shading


def _panels(rng, looks: _Looks, half) -> Tuple[List[Primitive], List[str]]:
    """Flat panels (pictures, doors) a little in front of the walls."""
    prims, shading = [], []
    for _ in range(int(rng.integers(0, 5))):
        axis = int(rng.choice([0, 2]))
        other = 2 - axis
        side = rng.choice([-1.0, 1.0])
        w = rng.uniform(0.2, 0.8) * half[other]
        h = rng.uniform(0.2, 0.8) * half[1]
        centre = np.zeros(3)
        centre[axis] = side * (half[axis] - 0.01)
        centre[other] = rng.uniform(-1, 1) * (half[other] - w)
        centre[1] = rng.uniform(-1, 1) * (half[1] - h)
        u, v = np.zeros(3), np.zeros(3)
        u[other], v[1] = w, h
        mat, mode = looks.material()
        prims.append(Quad(centre, u, v, mat))
        shading.append(mode)
    return prims, shading


def random_scene_spec(seed: int, num_views: int = 8, layouts: Sequence[str] = LAYOUTS,
                      fov_range: Tuple[float, float] = (40.0, 100.0), layout: Optional[str] = None) -> RandomSceneSpec:
    """The scene of ``seed`` (deterministic); ``layout`` forces one, else one of ``layouts``."""
    if num_views < 1:
        raise ValueError(f"num_views: expected >= 1, got {num_views}")
    if not 0 < fov_range[0] <= fov_range[1] < 180:
        raise ValueError(f"fov_range: expected 0 < low <= high < 180, got {fov_range}")
    rng = np.random.default_rng([int(seed), 19])
    layout = layout or str(layouts[int(rng.integers(len(layouts)))])
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    looks = _Looks(np.random.default_rng([int(seed), 19, 1]))
    half = _room_box(rng, layout)
    closed = layout != "objects" or rng.uniform() < 0.5
    roll = rng.choice([0.0, 3.0, 8.0])
    exts, area_centre, area_radius = _path(rng, layout, half, num_views, roll)
    cams = np.stack([conv.w2c_to_c2w(e)[:3, 3] for e in exts])
    count = int(rng.integers(2, 11))
    objs, obj_shading = _objects(rng, looks, half, half[1], cams, area_centre, area_radius, count, layout)
    if closed:  # the room holds every camera (an orbit may be wider or higher than the default box)
        lo = np.minimum(-half, cams.min(0) - 0.5)
        hi = np.maximum(half, cams.max(0) + 0.5)
        hi[1] = half[1]  # the floor stays where the objects stand
        mats = [looks.material() for _ in range(6)]
        walls: List[Primitive] = list(room_quads(lo, hi, [m for m, _ in mats]))
        wall_shading = [s for _, s in mats]
        panels, panel_shading = _panels(rng, looks, half) if layout != "objects" else ([], [])
    else:
        mat, mode = looks.material()
        walls = [Quad(np.array([0.0, half[1], 0.0]), np.array([half[0], 0, 0]), np.array([0, 0, half[2]]), mat)]
        wall_shading, panels, panel_shading = [mode], [], []
    sky = (tuple(looks.colour()), tuple(looks.colour()))
    fov = float(rng.uniform(*fov_range))
    return RandomSceneSpec(seed=int(seed), layout=layout, primitives=walls + panels + objs,
                           shading=wall_shading + panel_shading + obj_shading,
                           lighting=_lighting(rng, np.zeros(3), half), extrinsics=np.stack(exts), fov_deg=fov,
                           closed=closed, sky=sky, photometry=_photometry(rng))


# --------------------------------------------------------------------------- rendering


def _shade(spec: RandomSceneSpec, p: np.ndarray, nrm: np.ndarray, d: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Linear RGB of the hits (texture x light; ``flat`` materials unlit)."""
    perm = np.random.default_rng([spec.seed, 23]).permutation(256)
    rgb = np.zeros((len(p), 3))
    lit = np.ones(len(p), bool)
    for j, prim in enumerate(spec.primitives):
        m = k == j
        if m.any():
            rgb[m] = _texture(p[m], prim.material, perm)
            lit[m] = spec.shading[j] != "flat"
    n = np.where(((nrm * d).sum(-1) > 0)[:, None], -nrm, nrm)  # towards the viewer
    light = np.tile(np.asarray(spec.lighting.ambient), (len(p), 1))
    for direction, colour in spec.lighting.lights:
        dv = np.asarray(direction) / np.linalg.norm(direction)
        light += np.clip(-(n @ dv), 0, None)[:, None] * np.asarray(colour)
    if spec.lighting.point is not None:
        pos, colour = (np.asarray(x) for x in spec.lighting.point)
        to = pos - p
        r2 = np.maximum((to * to).sum(-1), 1e-2)
        light += (np.clip((n * to).sum(-1), 0, None) / np.sqrt(r2) / r2)[:, None] * colour
    return np.where(lit[:, None], rgb * light, rgb)


def render_spec_views(spec: RandomSceneSpec, views: Sequence[int], height: int, width: int
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render views ``views`` of ``spec`` at ``height`` x ``width``: images (n, H, W, 3)
    uint8, exact z-depth (n, H, W) float32 (0 where nothing is hit), world-to-camera
    (n, 3, 4) and K (n, 3, 3).  Per-view photometry is seeded by (seed, view)."""
    views = [int(v) for v in views]
    k = spec.intrinsics(height, width)
    c2w = conv.w2c_to_c2w(spec.extrinsics)
    u, v = conv.pixel_centres(height, width)
    r2 = ((u - width / 2) ** 2 + (v - height / 2) ** 2) / ((width / 2) ** 2 + (height / 2) ** 2)
    ph = spec.photometry
    images = np.zeros((len(views), height, width, 3), np.uint8)
    depth = np.zeros((len(views), height, width), np.float32)
    for out, i in enumerate(views):
        d = _pixel_rays(k, height, width) @ c2w[i, :3, :3].T
        o = np.broadcast_to(c2w[i, :3, 3], d.shape)
        t, nrm, idx = cast_rays(spec.primitives, o, d)
        hit = idx >= 0
        p = o + d * np.where(hit, t, 0.0)[:, None]
        rgb = _shade(spec, p, nrm, d, idx)
        if not hit.all():
            up = np.clip(-d[:, 1] / np.linalg.norm(d, axis=1), -1, 1)[:, None] * 0.5 + 0.5
            sky = np.asarray(spec.sky[0]) * up + np.asarray(spec.sky[1]) * (1 - up)
            rgb = np.where(hit[:, None], rgb, sky)
        vrng = np.random.default_rng([spec.seed, 29, i])
        gain = ph.exposure * math.exp(vrng.normal(0, ph.exposure_jitter)) * np.asarray(ph.white_balance)
        rgb = rgb.reshape(height, width, 3) * gain * (1 - ph.vignette * r2)[..., None]
        rgb = np.clip(rgb, 0, 1) ** (1 / ph.gamma)
        if ph.noise > 0:
            rgb = rgb + vrng.normal(0, ph.noise, rgb.shape)
        images[out] = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
        depth[out] = np.where(hit, t, 0.0).reshape(height, width)
    ext = spec.extrinsics[views][:, :3].copy()
    return images, depth, ext, np.tile(k, (len(views), 1, 1))


def make_randomized_scene(seed: int = 0, num_views: int = 4, height: int = 126, width: int = 168,
                          layout: Optional[str] = None, fov_range: Tuple[float, float] = (40.0, 100.0)
                          ) -> SyntheticScene:
    """A domain-randomised scene as a :class:`~.scene.SyntheticScene` (images, exact depth,
    cameras, primitives: ``distance_to_surface`` and ``sample_surface`` work).  Its
    ``config`` records the size and seed only (the looks are the spec's)."""
    spec = random_scene_spec(seed, num_views, fov_range=fov_range, layout=layout)
    images, depth, ext, ks = render_spec_views(spec, range(num_views), height, width)
    cfg = SceneConfig(kind="room", num_views=num_views, height=height, width=width, focal=float(ks[0, 0, 0]),
                      seed=int(seed), closed=spec.closed, lighting=Lighting())
    return SyntheticScene(images=images, depth=depth, extrinsics=ext, intrinsics=ks, primitives=spec.primitives,
                          config=cfg)


__all__ = ["LAYOUTS", "SHADINGS", "RandomLighting", "Photometry", "RandomSceneSpec", "random_scene_spec",
           "render_spec_views", "make_randomized_scene"]
