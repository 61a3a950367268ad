"""Synthetic scenes: their definition (:class:`SceneConfig`), the rendered result with exact
ground truth (:class:`SyntheticScene`) and the generator (:func:`generate_scene`,
:func:`make_scene`): room or object layouts, random materials and lighting, camera paths.

Rendering is :func:`~.raycast.render`; the world frame is OpenCV-like (y down, the floor is
the plane y = ``floor_y`` > 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .. import conventions as conv
from ..quaternions import quat_wxyz_to_matrix
from ..reconstruction import Reconstruction
from .raycast import Box, Color, Lighting, Material, Primitive, Quad, Sphere, cast_rays, render, room_quads

_KINDS = ("room", "inside", "objects")


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
    :func:`core.model.ray_pose.rays_to_cameras` (one batch element: add a leading axis).

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
    from ..geometry import cameras_to_ray_map, poses_relative_to

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
    return quat_wxyz_to_matrix(q / np.linalg.norm(q))


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


__all__ = ["SceneConfig", "SyntheticScene", "ray_map", "look_at", "generate_scene", "make_scene"]
