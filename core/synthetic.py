"""Synthetic scenes with exact ground truth: textured rooms, boxes and spheres, ray cast.

Pure numpy (no torch, no other dependency).  Every pixel's ray goes through its centre
``(i + 0.5, j + 0.5)`` with the scene's K (continuous pixel coordinates, see
``docs/conventions.md``), meets the nearest primitive, and gives

* the exact **z-depth** (float32; the ray is built with camera-frame z = 1, so the ray
  parameter *is* the z-depth),
* a colour: a procedural solid texture (checker / stripes / fractal noise, two colours per
  primitive, plus fine detail noise) times Lambertian shading from one directional light and
  an ambient term.  Shading is view-independent, so the views are photometrically consistent.

**Background.**  By default the scenes are *closed* (a room encloses everything), so every
ray hits a surface and every depth is valid.  With ``closed=False`` the room is replaced by a
finite floor; rays that hit nothing get **depth 0** (the project's "invalid" value, which
:meth:`Reconstruction.valid_mask` drops) and the background colour, and
:attr:`SyntheticScene.background` marks them.

**World frame.**  OpenCV-like: y points *down* (the floor is the plane y = ``floor_y`` > 0),
so "up" is -y.  Cameras are OpenCV (x right, y down, z forward).

The surface is the union of the primitives' boundaries: :meth:`SyntheticScene.sample_surface`
and :meth:`SyntheticScene.distance_to_surface` use exactly that set (object placement avoids
overlaps between objects, but a box's bottom face lies on the floor);
``sample_surface(n, visible=True)`` keeps to the part some view sees (exact ray-cast
visibility, :meth:`SyntheticScene.visible_from`).

    scene = make_scene("room", num_views=6, height=126, width=168, seed=0)
    rec = scene.to_reconstruction()          # the ground truth as a Reconstruction
    pts = scene.sample_surface(10000)        # points on the true surface, by area
    d = scene.distance_to_surface(points)    # exact unsigned distance to it
    rays = scene.ray_map(relative_to=0)      # exact DA3-layout ray map
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from . import conventions as conv
from .reconstruction import Reconstruction

Color = Tuple[float, float, float]

_T_MIN = 1e-9  # ray parameters at or below this are not hits
_EDGE_TOL = 1e-9  # relative tolerance on quad edges (closes seams between the room's faces)
_KINDS = ("room", "inside", "objects")


# --------------------------------------------------------------------------- materials


@dataclass(frozen=True)
class Material:
    """A procedural solid texture: the colour of a world point ``p`` is a mix of ``color_a``
    and ``color_b`` driven by a pattern of ``p * scale + offset``, times ``1 + detail * n``
    with ``n`` fine value noise in [-1, 1].

    pattern: "checker" (3-D checkerboard: a 2-D checker on any axis-aligned face),
    "stripes" (smooth bands across ``stripe_dir``), "noise" (fractal value noise) or "plain".
    Colours are linear RGB in [0, 1].
    """

    color_a: Color = (0.8, 0.75, 0.7)
    color_b: Color = (0.3, 0.3, 0.35)
    pattern: str = "checker"
    scale: float = 2.0
    offset: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    stripe_dir: Tuple[float, float, float] = (1.0, 0.0, 0.0)
    detail: float = 0.15

    def __post_init__(self) -> None:
        if self.pattern not in ("checker", "stripes", "noise", "plain"):
            raise ValueError(f"pattern: expected 'checker', 'stripes', 'noise' or 'plain', got {self.pattern!r}")
        if not self.scale > 0:
            raise ValueError(f"scale: expected > 0, got {self.scale}")


@dataclass(frozen=True)
class Lighting:
    """One directional light plus ambient: ``shade = ambient + diffuse * max(0, -n . dir)``.

    ``direction`` is the direction the light *travels* (world frame; +y is down, so the
    default light comes from above); ``n`` is the surface normal turned towards the viewer.
    """

    direction: Tuple[float, float, float] = (0.4, 1.0, 0.3)
    ambient: float = 0.35
    diffuse: float = 0.65

    def __post_init__(self) -> None:
        if not np.linalg.norm(self.direction) > 0:
            raise ValueError(f"direction: expected a non-zero vector, got {self.direction}")
        if self.ambient < 0 or self.diffuse < 0:
            raise ValueError(f"ambient/diffuse: expected >= 0, got {self.ambient}, {self.diffuse}")


# --------------------------------------------------------------------------- primitives
#
# Every primitive offers
#   intersect(o, d) -> (t (M,), normal (M, 3))   nearest hit with t > _T_MIN, t = inf if none;
#                                                  the normal is the geometric one (unit), any side
#   distance(p)     -> (M,)                        exact unsigned distance to its boundary
#   area()          -> float
#   sample(n, rng)  -> (n, 3)                      uniform by area on its boundary
#   bounds()        -> (lo (3,), hi (3,))


@dataclass
class Quad:
    """A rectangle ``centre + a * u + b * v`` for a, b in [-1, 1] (two-sided).

    ``u`` and ``v`` are orthogonal half-extent vectors (world units).
    """

    centre: np.ndarray
    u: np.ndarray
    v: np.ndarray
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, np.float64).reshape(3)
        self.u = np.asarray(self.u, np.float64).reshape(3)
        self.v = np.asarray(self.v, np.float64).reshape(3)
        lu, lv = np.linalg.norm(self.u), np.linalg.norm(self.v)
        if lu <= 0 or lv <= 0 or abs(self.u @ self.v) > 1e-9 * lu * lv:
            raise ValueError("u, v: expected two non-zero orthogonal half-extent vectors")

    @property
    def normal(self) -> np.ndarray:
        n = np.cross(self.u, self.v)
        return n / np.linalg.norm(n)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        n = self.normal
        denom = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((self.centre - o) @ n) / denom
        p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None] - self.centre
        a = (p @ self.u) / (self.u @ self.u)
        b = (p @ self.v) / (self.v @ self.v)
        lim = 1.0 + _EDGE_TOL
        hit = np.isfinite(t) & (t > _T_MIN) & (np.abs(a) <= lim) & (np.abs(b) <= lim)
        return np.where(hit, t, np.inf), np.broadcast_to(n, d.shape)

    def distance(self, p: np.ndarray) -> np.ndarray:
        lu, lv = np.linalg.norm(self.u), np.linalg.norm(self.v)
        q = p - self.centre
        a, b, h = q @ (self.u / lu), q @ (self.v / lv), q @ self.normal
        da = np.abs(a) - np.clip(np.abs(a), 0, lu)
        db = np.abs(b) - np.clip(np.abs(b), 0, lv)
        return np.sqrt(da * da + db * db + h * h)

    def area(self) -> float:
        return float(4 * np.linalg.norm(self.u) * np.linalg.norm(self.v))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        ab = rng.uniform(-1, 1, (n, 2))
        return self.centre + ab[:, :1] * self.u + ab[:, 1:] * self.v

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        ext = np.abs(self.u) + np.abs(self.v)
        return self.centre - ext, self.centre + ext


@dataclass
class Box:
    """A solid box with half sizes ``half`` (3,), rotated by ``rot`` (box-to-world, 3x3)
    about ``centre``; ``rot = I`` is axis-aligned."""

    centre: np.ndarray
    half: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, np.float64).reshape(3)
        self.half = np.asarray(self.half, np.float64).reshape(3)
        self.rot = np.asarray(self.rot, np.float64).reshape(3, 3)
        if np.any(self.half <= 0):
            raise ValueError(f"half: expected positive half sizes, got {self.half}")
        if not np.allclose(self.rot @ self.rot.T, np.eye(3), atol=1e-9) or np.linalg.det(self.rot) < 0:
            raise ValueError("rot: expected a proper rotation matrix")

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        ol = (o - self.centre) @ self.rot  # world -> box frame (R^T x, row vectors)
        dl = d @ self.rot
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-self.half - ol) / dl
            t2 = (self.half - ol) / dl
        # a ray parallel to a slab and inside it gives nan for that axis: ignore the axis
        tmin = np.nanmax(np.minimum(t1, t2), -1)
        tmax = np.nanmin(np.maximum(t1, t2), -1)
        entry = (tmax >= tmin) & (tmin > _T_MIN)
        exit_ = (tmax >= tmin) & (tmin <= _T_MIN) & (tmax > _T_MIN)  # origin inside the box
        t = np.where(entry, tmin, np.where(exit_, tmax, np.inf))
        pl = ol + dl * np.where(np.isfinite(t), t, 0.0)[:, None]
        axis = np.argmax(np.abs(pl) / self.half, -1)
        rows = np.arange(len(pl))
        nl = np.zeros_like(pl)
        nl[rows, axis] = np.where(pl[rows, axis] >= 0, 1.0, -1.0)
        return t, nl @ self.rot.T

    def distance(self, p: np.ndarray) -> np.ndarray:
        q = np.abs((p - self.centre) @ self.rot) - self.half
        return np.abs(np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0))

    def _face_areas(self) -> np.ndarray:
        s = 2 * self.half
        a = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
        return np.repeat(a, 2)  # faces -x, +x, -y, +y, -z, +z

    def area(self) -> float:
        return float(self._face_areas().sum())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        areas = self._face_areas()
        face = rng.choice(6, size=n, p=areas / areas.sum())
        p = rng.uniform(-1, 1, (n, 3)) * self.half
        axis, side = face // 2, face % 2
        p[np.arange(n), axis] = np.where(side == 0, -1.0, 1.0) * self.half[axis]
        return p @ self.rot.T + self.centre

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        ext = np.abs(self.rot) @ self.half
        return self.centre - ext, self.centre + ext


@dataclass
class Sphere:
    """A solid sphere."""

    centre: np.ndarray
    radius: float
    material: Material = field(default_factory=Material)

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, np.float64).reshape(3)
        self.radius = float(self.radius)
        if not self.radius > 0:
            raise ValueError(f"radius: expected > 0, got {self.radius}")

    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        oc = o - self.centre
        a = (d * d).sum(-1)
        half_b = (oc * d).sum(-1)
        c = (oc * oc).sum(-1) - self.radius**2
        disc = half_b * half_b - a * c
        sq = np.sqrt(np.maximum(disc, 0.0))
        # the numerically stable pair of roots (no cancellation): q = -(b/2 + sign(b/2) sqrt)
        q = -(half_b + np.where(half_b >= 0, sq, -sq))
        with np.errstate(divide="ignore", invalid="ignore"):
            r1, r2 = q / a, c / q
        lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
        t = np.where(lo > _T_MIN, lo, np.where(hi > _T_MIN, hi, np.inf))
        t = np.where((disc >= 0) & np.isfinite(t), t, np.inf)
        p = oc + d * np.where(np.isfinite(t), t, 0.0)[:, None]
        return t, p / self.radius

    def distance(self, p: np.ndarray) -> np.ndarray:
        return np.abs(np.linalg.norm(p - self.centre, axis=-1) - self.radius)

    def area(self) -> float:
        return float(4 * math.pi * self.radius**2)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        v = rng.normal(size=(n, 3))
        return self.centre + self.radius * v / np.linalg.norm(v, axis=1, keepdims=True)

    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.centre - self.radius, self.centre + self.radius


Primitive = Union[Quad, Box, Sphere]


def room_quads(lo: Sequence[float], hi: Sequence[float], materials: Sequence[Material]) -> List[Quad]:
    """The six inner faces of the axis-aligned box ``lo``..``hi``, in the order
    -x, +x, -y (ceiling), +y (floor), -z, +z; ``materials`` gives one per face (or one for all)."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
        raise ValueError(f"lo, hi: expected two 3-vectors with hi > lo, got {lo} and {hi}")
    mats = list(materials)
    if len(mats) == 1:
        mats = mats * 6
    if len(mats) != 6:
        raise ValueError(f"materials: expected 1 or 6 materials, got {len(mats)}")
    c, h = (lo + hi) / 2, (hi - lo) / 2
    e = np.eye(3)
    quads = []
    for axis in range(3):
        a1, a2 = [k for k in range(3) if k != axis]
        for side, value in enumerate((lo[axis], hi[axis])):
            centre = c.copy()
            centre[axis] = value
            quads.append(Quad(centre, e[a1] * h[a1], e[a2] * h[a2], mats[2 * axis + side]))
    return quads


# --------------------------------------------------------------------------- textures


def _value_noise(p: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] at points p (M, 3): hashed lattice values, smoothstep-
    interpolated (C1).  ``perm`` is a permutation of 0..255."""
    i0 = np.floor(p)
    f = p - i0
    w = f * f * (3.0 - 2.0 * f)
    i0 = i0.astype(np.int64) & 255
    i1 = (i0 + 1) & 255
    out = np.zeros(len(p))
    for cx in (0, 1):
        ix = i1[:, 0] if cx else i0[:, 0]
        wx = w[:, 0] if cx else 1 - w[:, 0]
        hx = perm[ix]
        for cy in (0, 1):
            iy = i1[:, 1] if cy else i0[:, 1]
            wy = wx * (w[:, 1] if cy else 1 - w[:, 1])
            hy = perm[(hx + iy) & 255]
            for cz in (0, 1):
                iz = i1[:, 2] if cz else i0[:, 2]
                wz = wy * (w[:, 2] if cz else 1 - w[:, 2])
                out += wz * perm[(hy + iz) & 255]
    return out / 255.0


def _fractal_noise(p: np.ndarray, perm: np.ndarray, octaves: int = 3) -> np.ndarray:
    total, amp, norm = np.zeros(len(p)), 1.0, 0.0
    for k in range(octaves):
        total += amp * _value_noise(p * (2.0**k) + 17.3 * k, perm)
        norm += amp
        amp *= 0.5
    return total / norm


def _texture(p: np.ndarray, mat: Material, perm: np.ndarray) -> np.ndarray:
    """Colours (M, 3) of a material's solid texture at world points p (M, 3)."""
    q = p * mat.scale + np.asarray(mat.offset)
    if mat.pattern == "checker":
        mix = (np.floor(q).sum(-1) % 2).astype(np.float64)
    elif mat.pattern == "stripes":
        sd = np.asarray(mat.stripe_dir, np.float64)
        s = np.sin(2 * math.pi * (q @ (sd / np.linalg.norm(sd))))
        mix = np.clip(0.5 + 1.5 * s, 0, 1)  # soft-edged bands
    elif mat.pattern == "noise":
        mix = np.clip((_fractal_noise(q, perm) - 0.5) * 2.2 + 0.5, 0, 1)
    else:
        mix = np.zeros(len(p))
    a, b = np.asarray(mat.color_a), np.asarray(mat.color_b)
    rgb = a + (b - a) * mix[:, None]
    if mat.detail > 0:
        rgb = rgb * (1.0 + mat.detail * (2.0 * _value_noise(q * 4.0 + 3.7, perm) - 1.0))[:, None]
    return rgb


# --------------------------------------------------------------------------- rendering


def _pixel_rays(intrinsics: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H*W, 3) camera-frame directions with z = 1 through the pixel centres."""
    u, v = conv.pixel_centres(height, width)
    pix = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3)
    return pix @ np.linalg.inv(intrinsics).T


def cast_rays(primitives: Sequence[Primitive], o: np.ndarray, d: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hits of rays ``o + t d`` (o, d (M, 3)) with any primitive.

    Returns t (M,) (inf where nothing is hit), the unit geometric normal (M, 3) and the
    index (M,) of the primitive hit (-1 for none).
    """
    best_t = np.full(len(d), np.inf)
    best_n = np.zeros_like(d)
    best_k = np.full(len(d), -1)
    for k, prim in enumerate(primitives):
        t, nrm = prim.intersect(o, d)
        closer = t < best_t
        best_t = np.where(closer, t, best_t)
        best_n[closer] = nrm[closer]
        best_k[closer] = k
    return best_t, best_n, best_k


def render(primitives: Sequence[Primitive], extrinsics: np.ndarray, intrinsics: np.ndarray, height: int,
           width: int, lighting: Optional[Lighting] = None, background: Color = (0.55, 0.7, 0.9),
           noise_seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray cast ``primitives`` from N cameras.

    Args:
        primitives: :class:`Quad`, :class:`Box`, :class:`Sphere` (each with its material).
        extrinsics: (N, 3, 4) or (N, 4, 4) OpenCV world-to-camera.
        intrinsics: (N, 3, 3) pixels, continuous coordinates (rays through (i + 0.5, j + 0.5)).
        height, width: image size.
        lighting: :class:`Lighting` (default: ``Lighting()``).
        background: colour of rays that hit nothing.
        noise_seed: seeds the noise lattice of the textures.

    Returns:
        images (N, H, W, 3) uint8, z-depth (N, H, W) float32 (0 where nothing is hit),
        primitive index (N, H, W) int32 (-1 where nothing is hit).
    """
    ext = conv.as_4x4(extrinsics)
    ks = np.asarray(intrinsics, np.float64)
    if ks.shape != (len(ext), 3, 3):
        raise ValueError(f"intrinsics: expected shape ({len(ext)}, 3, 3), got {ks.shape}")
    lighting = lighting or Lighting()
    light = np.asarray(lighting.direction, np.float64)
    light = light / np.linalg.norm(light)
    perm = np.random.default_rng(noise_seed).permutation(256)
    n = len(ext)
    images = np.zeros((n, height, width, 3), np.uint8)
    depth = np.zeros((n, height, width), np.float32)
    index = np.full((n, height, width), -1, np.int32)
    c2w = conv.w2c_to_c2w(ext)
    bg = np.asarray(background, np.float64)
    for i in range(n):
        d = _pixel_rays(ks[i], height, width) @ c2w[i, :3, :3].T  # camera z = 1: t is the z-depth
        o = np.broadcast_to(c2w[i, :3, 3], d.shape)
        t, nrm, k = cast_rays(primitives, o, d)
        hit = k >= 0
        p = o + d * np.where(hit, t, 0.0)[:, None]
        rgb = np.tile(bg, (len(d), 1))
        for j, prim in enumerate(primitives):
            m = k == j
            if m.any():
                rgb[m] = _texture(p[m], prim.material, perm)
        # turn the normal towards the viewer, then Lambert
        facing = np.where(((nrm * d).sum(-1) > 0)[:, None], -nrm, nrm)
        shade = lighting.ambient + lighting.diffuse * np.clip(-(facing @ light), 0, 1)
        rgb = np.where(hit[:, None], rgb * shade[:, None], rgb)
        images[i] = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8).reshape(height, width, 3)
        depth[i] = np.where(hit, t, 0.0).reshape(height, width)
        index[i] = k.reshape(height, width)
    return images, depth, index


# --------------------------------------------------------------------------- configs and scene


@dataclass(frozen=True)
class SceneConfig:
    """Everything that defines a generated scene (all defaults are immutable).

    kind: "room" -- a room with objects on its floor, cameras on an arc of ``arc_deg``
        (default 90) at radius ``ring_radius`` (default 3) about the room centre, looking at
        the objects; "inside" -- cameras near the room centre turning through ``arc_deg``
        (default 90), looking outwards at the walls and the objects along them; "objects" --
        a tighter cluster of objects (and a freely rotated cube floating above it) seen from
        a full ring (default 360 degrees, radius 4) of elevated cameras looking down at it,
        inside a larger room.
    num_views, height, width: N, H, W.
    fov_deg: horizontal field of view; ignored when ``focal`` (pixels) is given.
    principal_point: (cx, cy) in pixels; default the image centre (W/2, H/2), as DA3 predicts.
    seed: makes everything deterministic (geometry, cameras, materials, noise).
    num_objects: boxes and spheres; default 4 ("room", "inside") or 6 ("objects").
    arc_deg: see ``kind``; an arc of 360 or more spaces the views evenly around the circle
        (no duplicate view), a smaller one puts the first and last view at its ends.
    ring_radius: camera distance from the vertical axis through the centre (kinds "room",
        "objects").
    closed: enclose the scene in a room (no background, every depth valid); False keeps only
        a finite floor: background pixels get depth 0 and ``background`` colour.
    lighting: :class:`Lighting`.
    background: colour of pixels that see no surface (open scenes only).
    """

    kind: str = "room"
    num_views: int = 6
    height: int = 126
    width: int = 168
    fov_deg: float = 60.0
    focal: Optional[float] = None
    principal_point: Optional[Tuple[float, float]] = None
    seed: int = 0
    num_objects: Optional[int] = None
    arc_deg: Optional[float] = None
    ring_radius: Optional[float] = None
    closed: bool = True
    lighting: Lighting = field(default_factory=Lighting)
    background: Color = (0.55, 0.7, 0.9)

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {self.kind!r}")
        for name in ("num_views", "height", "width"):
            value = getattr(self, name)
            if int(value) != value or value < (1 if name == "num_views" else 2):
                raise ValueError(f"{name}: expected a positive integer (>= 2 for image sizes), got {value!r}")
        if self.focal is None and not 0 < self.fov_deg < 180:
            raise ValueError(f"fov_deg: expected 0 < fov_deg < 180, got {self.fov_deg}")
        if self.focal is not None and not self.focal > 0:
            raise ValueError(f"focal: expected > 0 pixels, got {self.focal}")
        if self.num_objects is not None and (int(self.num_objects) != self.num_objects or self.num_objects < 0):
            raise ValueError(f"num_objects: expected an integer >= 0, got {self.num_objects!r}")
        if self.arc_deg is not None and not self.arc_deg >= 0:
            raise ValueError(f"arc_deg: expected >= 0, got {self.arc_deg}")
        if self.ring_radius is not None and not self.ring_radius > 0:
            raise ValueError(f"ring_radius: expected > 0, got {self.ring_radius}")

    @property
    def intrinsics(self) -> np.ndarray:
        """(3, 3) K of every view."""
        f = self.focal if self.focal is not None else (self.width / 2) / math.tan(math.radians(self.fov_deg) / 2)
        cx, cy = self.principal_point if self.principal_point is not None else (self.width / 2, self.height / 2)
        return np.array([[f, 0, cx], [0, f, cy], [0, 0, 1.0]])


@dataclass
class SyntheticScene:
    """Rendered views of a scene with exact ground truth.

    Attributes:
        images: (N, H, W, 3) uint8.
        depth: (N, H, W) float32 exact z-depth; 0 where a ray hits nothing (open scenes only).
        extrinsics: (N, 3, 4) float64 OpenCV world-to-camera.
        intrinsics: (N, 3, 3) float64 in pixels, continuous coordinates: the centre of pixel
            (col i, row j) is (i + 0.5, j + 0.5), and that is where every ray goes through.
        primitives: the :class:`Quad` / :class:`Box` / :class:`Sphere` list that was rendered.
        config: the :class:`SceneConfig` that made it.
        primitive_index: (N, H, W) int32 index into ``primitives`` of what each pixel sees (-1: none).
    """

    images: np.ndarray
    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    primitives: List[Primitive]
    config: SceneConfig = field(default_factory=SceneConfig)
    primitive_index: Optional[np.ndarray] = None

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def background(self) -> np.ndarray:
        """(N, H, W) bool: pixels whose ray hits nothing (all False in closed scenes)."""
        return ~(self.depth > 0)

    @property
    def bounds(self) -> Tuple[np.ndarray, np.ndarray]:
        """(lo (3,), hi (3,)) the axis-aligned bounding box of all primitives."""
        b = [p.bounds() for p in self.primitives]
        return np.min([x[0] for x in b], 0), np.max([x[1] for x in b], 0)

    @property
    def extent(self) -> float:
        """Diagonal of the scene's bounding box (world units): a natural length scale."""
        lo, hi = self.bounds
        return float(np.linalg.norm(hi - lo))

    def sample_surface(self, n: int, seed: int = 0, visible: bool = False) -> np.ndarray:
        """(n, 3) float64 points uniform by area on the surface.

        ``visible=False``: on every primitive's whole boundary (including faces no camera
        sees, such as the ceiling or a box's bottom on the floor).  ``visible=True``: on the
        part seen by at least one view (:meth:`visible_from`) -- the reference for the
        completeness of a reconstruction from these views.
        """
        if int(n) != n or n < 0:
            raise ValueError(f"n: expected an integer >= 0, got {n!r}")
        n = int(n)
        rng = np.random.default_rng(seed)
        areas = np.array([p.area() for p in self.primitives])

        def draw(k: int) -> np.ndarray:
            counts = rng.multinomial(k, areas / areas.sum())
            out = np.concatenate([p.sample(int(c), rng) for p, c in zip(self.primitives, counts)])
            return out[rng.permutation(len(out))]

        if not visible:
            return draw(n)
        kept: List[np.ndarray] = []
        total = 0
        for _ in range(100):
            if total >= n:
                break
            batch = draw(max(1024, 2 * (n - total)))
            batch = batch[self.visible_from(batch).any(1)]
            kept.append(batch)
            total += len(batch)
        if total < n:
            raise ValueError(f"visible: only {total} of {n} samples are seen by any view")
        return np.concatenate(kept)[:n]

    def visible_from(self, points: np.ndarray) -> np.ndarray:
        """(M, N) bool: whether each surface point (M, 3) is seen by each view -- inside the
        image and the first hit of the ray from that camera through it (exact ray casting,
        relative tolerance 1e-7 on depth)."""
        p = np.asarray(points, np.float64)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"points: expected shape (M, 3), got {p.shape}")
        _, height, width = self.depth.shape
        c2w = conv.w2c_to_c2w(self.extrinsics)
        out = np.zeros((len(p), self.num_views), bool)
        for i in range(self.num_views):
            cam = p @ self.extrinsics[i, :, :3].T + self.extrinsics[i, :, 3]
            z = cam[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                uv = (cam @ self.intrinsics[i].T)[:, :2] / z[:, None]
            inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
            idx = np.flatnonzero(inside)
            if len(idx) == 0:
                continue
            o = np.broadcast_to(c2w[i, :3, 3], (len(idx), 3))
            d = (p[idx] - c2w[i, :3, 3]) / z[idx, None]  # camera z = 1: the point is at t = z
            t, _, _ = cast_rays(self.primitives, o, d)
            out[idx, i] = t >= z[idx] * (1 - 1e-7)
        return out

    def distance_to_surface(self, points: np.ndarray) -> np.ndarray:
        """(M,) exact unsigned distance of world points (..., 3) to the nearest primitive."""
        p = np.asarray(points, np.float64)
        if p.shape[-1:] != (3,):
            raise ValueError(f"points: expected shape (..., 3), got {p.shape}")
        p = p.reshape(-1, 3)
        out = np.full(len(p), np.inf)
        for prim in self.primitives:
            out = np.minimum(out, prim.distance(p))
        return out

    def to_reconstruction(self, conf: Optional[np.ndarray] = None) -> Reconstruction:
        """The ground truth as a :class:`Reconstruction` (model "ground-truth", ``camera_source``
        "input"), with copies of the arrays.  Background pixels (open scenes) have depth 0 and
        are also marked in ``sky``; ``conf`` (N, H, W) is passed through.  The scale is exact
        in scene units, which are not declared metres (``is_metric`` False)."""
        sky = self.background if self.background.any() else None
        return Reconstruction(images=self.images.copy(), depth=self.depth.copy(), extrinsics=self.extrinsics.copy(),
                              intrinsics=self.intrinsics.copy(), conf=conf, sky=sky, model="ground-truth",
                              image_names=[f"view_{i:04d}" for i in range(self.num_views)],
                              options={"camera_source": "input", "synthetic_seed": self.seed,
                                       "synthetic_kind": self.config.kind})

    def ray_map(self, h: Optional[int] = None, w: Optional[int] = None,
                relative_to: Optional[int] = None) -> np.ndarray:
        """Exact rays in DA3's ray-map layout; see :func:`ray_map`."""
        return ray_map(self, h, w, relative_to)

    def render_views(self, extrinsics: np.ndarray, intrinsics: Optional[np.ndarray] = None,
                     height: Optional[int] = None, width: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray]:
        """Render new views of the same scene (same textures and light): (images, depth) as
        in :func:`render`; K and size default to the scene's."""
        ext = conv.as_4x4(extrinsics)
        height = height or self.images.shape[1]
        width = width or self.images.shape[2]
        ks = np.tile(self.intrinsics[0], (len(ext), 1, 1)) if intrinsics is None else np.asarray(intrinsics)
        images, depth, _ = render(self.primitives, ext, ks, height, width, self.config.lighting,
                                  self.config.background, noise_seed=self.seed)
        return images, depth


def ray_map(scene: SyntheticScene, h: Optional[int] = None, w: Optional[int] = None,
            relative_to: Optional[int] = None) -> np.ndarray:
    """(N, h, w, 6) float64 exact ray map of the scene's cameras, in the layout of
    :func:`core.ray_pose.rays_to_cameras` (one batch element: add a leading axis).

    Channels 0-2: the world direction through each cell centre (not normalised: it has
    camera-frame z = 1); channels 3-5: the camera centre.  The h x w grid (default: the image
    resolution) covers the H x W image; cell (r, c) is centred at pixel coordinates
    ((c + 0.5) W / w, (r + 0.5) H / h), which is the route's reference grid.

    ``relative_to=k`` expresses the rays in view k's camera frame instead of the scene's
    world -- the frame DA3's ray head predicts in (its world is the reference view's camera).
    The route then returns the poses ``w2c_i @ c2w_k`` (see ``geometry.poses_relative_to``).
    The route divides directions by their world z, so each view must look within well under
    90 degrees of that frame's +z axis.
    """
    from .geometry import cameras_to_ray_map, poses_relative_to

    n, height, width = scene.depth.shape
    ext = scene.extrinsics if relative_to is None else poses_relative_to(scene.extrinsics, relative_to)
    return cameras_to_ray_map(ext, scene.intrinsics, (height, width), (h or height, w or width))


# --------------------------------------------------------------------------- scene generation


def look_at(centre: np.ndarray, target: np.ndarray, up: Sequence[float] = (0.0, -1.0, 0.0)) -> np.ndarray:
    """OpenCV world-to-camera (3, 4) of a camera at ``centre`` looking at ``target`` with its
    image "up" (-y of the camera) towards world ``up`` (default -y: the world's y points down)."""
    centre, target = np.asarray(centre, np.float64), np.asarray(target, np.float64)
    z = target - centre
    if not np.linalg.norm(z) > 0:
        raise ValueError("target: must differ from centre")
    z = z / np.linalg.norm(z)
    x = np.cross(-np.asarray(up, np.float64), z)  # camera y (image down) ~ world -up
    if not np.linalg.norm(x) > 1e-12:
        raise ValueError("up: parallel to the viewing direction")
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    return np.concatenate([r, (-r @ centre)[:, None]], 1)


def _yaw(rng: np.random.Generator) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return conv.quaternion_to_rotation(q / np.linalg.norm(q))


def _random_material(rng: np.random.Generator, base: Color, pattern: Optional[str] = None) -> Material:
    """A material around ``base`` with a second colour of a different hue and brightness."""
    pattern = pattern or ("checker", "stripes", "noise")[int(rng.integers(3))]
    base = np.asarray(base, np.float64)
    other = np.clip(rng.permutation(base) * rng.uniform(0.35, 0.7) + rng.uniform(0.0, 0.25, 3), 0.05, 1.0)
    sd = rng.normal(size=3)
    return Material(color_a=tuple(base), color_b=tuple(other), pattern=pattern,
                    scale=float(rng.uniform(1.5, 3.5)), offset=tuple(rng.uniform(0, 10, 3)),
                    stripe_dir=tuple(sd / np.linalg.norm(sd)), detail=float(rng.uniform(0.1, 0.2)))


def _place_objects(rng: np.random.Generator, mat_rng: np.random.Generator, count: int, floor_y: float,
                   spread: float, size: float, keep_clear: float = 0.0) -> List[Primitive]:
    """``count`` boxes (even j, rotated about the vertical) and spheres (odd j) on the floor
    y = floor_y, centred within +-spread in x and z, with footprints that do not overlap each
    other nor the disc of radius ``keep_clear`` about the vertical axis, as far as 200 draws
    per object allow."""
    prims: List[Primitive] = []
    discs: List[Tuple[np.ndarray, float]] = []
    for j in range(count):
        for _attempt in range(200):
            pos = rng.uniform(-spread, spread, 2)
            if j % 2 == 0:
                half = rng.uniform(0.3, 0.7, 3) * size
                radius = float(np.hypot(half[0], half[2]))
            else:
                r = float(rng.uniform(0.3, 0.6) * size)
                radius = r
            clear = keep_clear <= 0 or np.linalg.norm(pos) > radius + keep_clear
            if clear and all(np.linalg.norm(pos - c) > radius + rc + 0.05 for c, rc in discs):
                break
        discs.append((pos, radius))
        if j % 2 == 0:
            rot = _yaw(rng)
            color = tuple(rng.uniform(0.2, 0.9, 3))
            prims.append(Box(centre=np.array([pos[0], floor_y - half[1], pos[1]]), half=half, rot=rot,
                             material=_random_material(mat_rng, color)))
        else:
            color = tuple(rng.uniform(0.2, 0.9, 3))
            prims.append(Sphere(centre=np.array([pos[0], floor_y - r, pos[1]]), radius=r,
                                material=_random_material(mat_rng, color)))
    return prims


def _surroundings(half: np.ndarray, closed: bool, base: Color, mat_rng: np.random.Generator) -> List[Primitive]:
    """The room's six faces (closed) or just its floor (open), each with its own material."""
    if closed:
        mats = [_random_material(mat_rng, tuple(np.clip(np.asarray(base) * mat_rng.uniform(0.8, 1.1, 3), 0, 1)))
                for _ in range(6)]
        mats[3] = _random_material(mat_rng, base, "checker")  # a checkered floor
        return list(room_quads(-half, half, mats))
    floor = Quad(np.array([0.0, half[1], 0.0]), np.array([half[0], 0, 0]), np.array([0, 0, half[2]]),
                 _random_material(mat_rng, base, "checker"))
    return [floor]


def generate_scene(config: SceneConfig) -> SyntheticScene:
    """Build the primitives and cameras of ``config`` and render them (deterministic)."""
    cfg = config
    rng = np.random.default_rng(cfg.seed)  # geometry and cameras
    mat_rng = np.random.default_rng([cfg.seed, 7])  # materials, independent of the geometry
    if cfg.kind == "objects":
        half = np.array([6.0, 2.0, 6.0]) * rng.uniform(0.9, 1.1, 3)
    else:
        half = np.array([4.0, 1.5, 4.0]) * rng.uniform(0.85, 1.15, 3)
    base = tuple(rng.uniform(0.5, 0.9, 3))
    floor_y = float(half[1])
    num_objects = cfg.num_objects if cfg.num_objects is not None else (6 if cfg.kind == "objects" else 4)
    if cfg.kind == "objects":
        objects = _place_objects(rng, mat_rng, int(num_objects), floor_y, spread=1.3, size=1.1)
        # and a freely rotated cube floating above the cluster (clear of the tallest objects)
        # (its lowest corner is 2.2 - 0.35 sqrt(3) = 1.59 above the floor, the tallest object 1.54)
        objects.append(Box(centre=np.array([0.0, floor_y - 2.2, 0.0]) + rng.normal(0, 0.1, 3) * [1, 0, 1],
                           half=np.full(3, 0.35), rot=_random_rotation(rng),
                           material=_random_material(mat_rng, tuple(rng.uniform(0.2, 0.9, 3)))))
    elif cfg.kind == "inside":  # along the walls, clear of the cameras at the centre
        spread = float(min(half[0], half[2])) - 1.1
        objects = _place_objects(rng, mat_rng, int(num_objects), floor_y, spread=spread, size=1.0, keep_clear=1.0)
    else:
        objects = _place_objects(rng, mat_rng, int(num_objects), floor_y, spread=1.6, size=1.0)
    prims: List[Primitive] = _surroundings(half, cfg.closed, base, mat_rng) + objects

    arc = math.radians(cfg.arc_deg if cfg.arc_deg is not None else (360.0 if cfg.kind == "objects" else 90.0))
    n = cfg.num_views
    start = rng.uniform(0, 2 * math.pi)
    exts = []
    for i in range(n):
        if arc >= 2 * math.pi - 1e-9:
            a = start + arc * i / n
        else:
            a = start + arc * (i / max(1, n - 1) - 0.5)
        if cfg.kind == "room":
            radius = cfg.ring_radius or 3.0
            centre = np.array([radius * math.sin(a), rng.uniform(-0.6, -0.2), radius * math.cos(a)])
            target = np.array([0.0, floor_y - 0.6, 0.0]) + rng.normal(0, 0.1, 3)
        elif cfg.kind == "inside":
            centre = rng.normal(0, 0.05, 3) + np.array([0, -0.3, 0])
            target = centre + np.array([math.sin(a), 0.15, math.cos(a)])
        else:
            radius = cfg.ring_radius or 4.0
            centre = np.array([radius * math.sin(a), floor_y - 2.2 + rng.uniform(-0.2, 0.2), radius * math.cos(a)])
            target = np.array([0.0, floor_y - 0.9, 0.0]) + rng.normal(0, 0.05, 3)
        exts.append(look_at(centre, target))
    ext = np.stack(exts)
    ks = np.tile(cfg.intrinsics, (n, 1, 1))
    images, depth, index = render(prims, ext, ks, cfg.height, cfg.width, cfg.lighting, cfg.background,
                                  noise_seed=cfg.seed)
    return SyntheticScene(images=images, depth=depth, extrinsics=ext, intrinsics=ks, primitives=prims,
                          config=cfg, primitive_index=index)


def make_scene(kind: str = "room", num_views: int = 6, height: int = 126, width: int = 168,
               fov_deg: float = 60.0, seed: int = 0, num_objects: Optional[int] = None,
               arc_deg: Optional[float] = None, **options) -> SyntheticScene:
    """A synthetic scene with exact ground truth (see :class:`SceneConfig` for every option).

    kind: "room" (default; cameras on a 90-degree arc inside a ~8 x 3 x 8 room, looking at
    boxes and spheres on the floor), "inside" (cameras at the room centre looking outwards)
    or "objects" (a ring of cameras around an object cluster).  Further keyword options
    (``focal``, ``principal_point``, ``ring_radius``, ``closed``, ``lighting``,
    ``background``) go to :class:`SceneConfig`.  A 6-view 126 x 168 scene takes about 0.2 s.
    """
    cfg = SceneConfig(kind=kind, num_views=num_views, height=height, width=width, fov_deg=fov_deg, seed=seed,
                      num_objects=num_objects, arc_deg=arc_deg, **options)
    return generate_scene(cfg)


__all__ = [
    "Material", "Lighting", "Quad", "Box", "Sphere", "Primitive", "room_quads", "cast_rays", "render",
    "SceneConfig", "SyntheticScene", "ray_map", "look_at", "generate_scene", "make_scene",
]
