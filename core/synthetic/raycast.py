"""Ray casting of synthetic scenes: materials and lighting, the primitives (:class:`Quad`,
:class:`Box`, :class:`Sphere`), their procedural solid textures, :func:`cast_rays` and
:func:`render`.

Pure numpy.  Every pixel's ray goes through its centre ``(i + 0.5, j + 0.5)`` with the
camera's K and has camera-frame z = 1, so the ray parameter of the nearest hit *is* the
z-depth; the colour is the hit primitive's texture times Lambertian shading from one
directional light plus ambient (view-independent, so views are photometrically consistent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .. import conventions as conv

Color = Tuple[float, float, float]

_T_MIN = 1e-9  # ray parameters at or below this are not hits
_EDGE_TOL = 1e-9  # relative tolerance on quad edges (closes seams between the room's faces)


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


__all__ = ["Color", "Material", "Lighting", "Quad", "Box", "Sphere", "Primitive", "room_quads", "cast_rays", "render"]
