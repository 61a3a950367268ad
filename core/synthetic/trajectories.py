"""Long camera paths through a synthetic room, and the measures of drift on them.

For the long-input work (issue 15): a loop that returns to its start, a path that never
returns, the scene rendered along either (:func:`make_long_scene`), a ground-truth
covisibility between two views (:func:`covisibility`) and the absolute trajectory error
(:func:`ate`).

* :func:`loop_trajectory` -- one full turn on a horizontal ring about the room centre,
  looking at the objects in the middle; view k is at angle 2 pi k / n, so the last view is
  next to the first (a loop closure is there to find).
* :func:`open_trajectory` -- a camera sliding along the room's longest wall, 0.8 from it and
  facing it; it never comes back, and views more than about 35 steps apart (240 views) see
  disjoint pieces of the wall (no true loop).  :func:`make_long_scene` gives that wall a
  non-repeating texture (fractal noise), so far-apart views do not look alike either (the
  room's checker or stripes would repeat every metre or so: perceptual aliasing).

Poses are OpenCV world-to-camera (N, 4, 4); the world is the scene's (y down).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import numpy as np

from .. import conventions as conv
from ..points import depth_to_points
from .raycast import Quad
from .scene import SyntheticScene, look_at, make_scene

TRAJECTORIES = ("loop", "open")

OPEN_DISTANCE = 0.8
"""Distance of the open trajectory's cameras from the wall (scene units)."""
OPEN_HEIGHT = 1.0
"""Height of the open trajectory's cameras above the floor."""
OPEN_TILT_DEG = 0.0
"""Downward tilt of the open trajectory's cameras.  0: they see the wall only.  A tilt that
brings the floor into view adds the same wall-floor edge to every view, and image features
of far-apart views then look alike (cosine ~0.93 instead of <= 0.45)."""


def _room(scene: SyntheticScene) -> Tuple[np.ndarray, np.ndarray]:
    """(lo, hi) of the room box: the scene's bounds (the room encloses everything)."""
    lo, hi = scene.bounds
    return np.asarray(lo, np.float64), np.asarray(hi, np.float64)


def _check_n(n: int) -> int:
    if int(n) != n or n < 2:
        raise ValueError(f"n: expected an integer >= 2, got {n!r}")
    return int(n)


def _open_wall(scene: SyntheticScene) -> Tuple[int, int]:
    """(axis the open trajectory runs along, axis of its wall's normal): the longer horizontal
    side of the room; the wall is its +z face (running along x) or its +x face."""
    lo, hi = _room(scene)
    return (0, 2) if (hi[0] - lo[0]) >= (hi[2] - lo[2]) else (2, 0)


def _with_noise_wall(scene: SyntheticScene) -> SyntheticScene:
    """The scene with the open trajectory's wall textured by fractal noise (its colours and
    scale kept), so that the texture never repeats along the path."""
    _, normal_axis = _open_wall(scene)
    wall = _room(scene)[1][normal_axis]
    prims = list(scene.primitives)
    for i, p in enumerate(prims):
        if isinstance(p, Quad) and abs(p.normal[normal_axis]) > 0.5 and abs(p.centre[normal_axis] - wall) < 1e-9:
            prims[i] = dataclasses.replace(p, material=dataclasses.replace(p.material, pattern="noise"))
    return dataclasses.replace(scene, primitives=prims)


def loop_trajectory(scene: SyntheticScene, n: int, radius: float = None, height: float = 0.4,
                    start_deg: float = 0.0) -> np.ndarray:
    """(n, 4, 4) world-to-camera poses of one full turn about the room's vertical axis.

    View k sits at angle ``start_deg + 360 k / n`` on a horizontal ring of ``radius`` (default
    the scene's ``ring_radius``, 3 for a "room"), ``height`` above the room's mid-height
    (world -y is up), looking at a point 0.6 above the middle of the floor (where the "room"
    scene's objects stand).  The last view is one step before the first: the loop closes.
    """
    n = _check_n(n)
    lo, hi = _room(scene)
    radius = float(radius if radius is not None else (scene.config.ring_radius or 3.0))
    centre = (lo + hi) / 2
    floor_y = hi[1]
    target = np.array([centre[0], floor_y - 0.6, centre[2]])
    out = np.zeros((n, 4, 4))
    for k in range(n):
        a = math.radians(start_deg) + 2 * math.pi * k / n
        eye = np.array([centre[0] + radius * math.sin(a), centre[1] - height, centre[2] + radius * math.cos(a)])
        out[k] = conv.as_4x4(look_at(eye, target))
    return out


def open_trajectory(scene: SyntheticScene, n: int, distance: float = OPEN_DISTANCE, height: float = OPEN_HEIGHT,
                    tilt_deg: float = OPEN_TILT_DEG, margin: float = 0.8) -> np.ndarray:
    """(n, 4, 4) world-to-camera poses of a camera sliding along the room's longest wall.

    The camera stays ``distance`` from the wall (the +z or +x face, whichever is longer) and
    ``height`` above the floor, faces the wall, tilted ``tilt_deg`` down, and moves in equal
    steps from ``margin`` inside one end of the wall to ``margin`` inside the other, so the
    views never leave the wall.  The path never returns: with the defaults (0.8 from the wall,
    60 degrees across) a view covers 0.92 of the wall, and in a room of the default size
    (a 6.8 to 9.2 long wall) 240 views are 0.02 to 0.03 apart, so views more than about 35
    apart share no surface (measured: none from 36 apart on for seeds 0-3; at most 43 in the
    smallest room the generator makes; :func:`covisibility`).
    """
    n = _check_n(n)
    lo, hi = _room(scene)
    floor_y = hi[1]
    along, normal_axis = _open_wall(scene)
    wall = hi[normal_axis]
    s = np.linspace(lo[along] + margin, hi[along] - margin, n)
    drop = distance * math.tan(math.radians(tilt_deg))
    out = np.zeros((n, 4, 4))
    for k in range(n):
        eye = np.zeros(3)
        eye[along] = s[k]
        eye[normal_axis] = wall - distance
        eye[1] = floor_y - height
        target = eye.copy()
        target[normal_axis] = wall
        target[1] += drop
        out[k] = conv.as_4x4(look_at(eye, target))
    return out


def make_long_scene(trajectory: str = "loop", n: int = 240, height: int = 126, width: int = 168, seed: int = 0,
                    fov_deg: float = 60.0, **scene_options
                    ) -> Tuple[SyntheticScene, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A "room" scene rendered along a long trajectory: (scene, extrinsics (n, 4, 4),
    intrinsics (n, 3, 3), images (n, h, w, 3) uint8, depth (n, h, w) float32).

    ``trajectory``: "loop" (:func:`loop_trajectory`) or "open" (:func:`open_trajectory`; the
    wall it faces gets a fractal-noise texture in its own colours, see the module docstring).
    The default size, 126 x 168, is a multiple of 14 on both sides, so DA3's preprocessing at
    ``process_res=168`` leaves the images unchanged (the true intrinsics are those of the
    processed images).  The returned scene holds these views (its ``images``, ``depth``,
    ``extrinsics`` (3 x 4), ``intrinsics``; ``config.num_views`` is ``n``; the cameras are the
    trajectory's, not the config's arc), so ``GroundTruthPredictor.from_scene(scene)`` and
    ``scene.to_reconstruction()`` work on it.  Further keywords go to :func:`make_scene`.
    Rendering costs 60 to 80 ms a view at 126 x 168 on one core (the ray caster): 240 views take
    about 15 to 20 s (measured 19.5 s for the loop, 21 s for the open path, on a loaded 2-core
    machine).
    """
    if trajectory not in TRAJECTORIES:
        raise ValueError(f"trajectory: expected one of {TRAJECTORIES}, got {trajectory!r}")
    n = _check_n(n)
    base = make_scene("room", num_views=1, height=height, width=width, fov_deg=fov_deg, seed=seed, **scene_options)
    if trajectory == "loop":
        ext = loop_trajectory(base, n)
    else:
        base = _with_noise_wall(base)
        ext = open_trajectory(base, n)
    ks = np.tile(base.config.intrinsics, (n, 1, 1))
    images, depth = base.render_views(ext, ks, height=height, width=width)
    scene = dataclasses.replace(base, images=images, depth=depth, extrinsics=ext[:, :3, :].copy(), intrinsics=ks,
                                primitive_index=None, config=dataclasses.replace(base.config, num_views=n))
    return scene, ext, ks, images, depth


def make_shot(n: int = 24, height: int = 126, width: int = 168, seed: int = 0, turn_deg: float = 90.0,
              fov_deg: float = 60.0, **scene_options
              ) -> Tuple[SyntheticScene, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A camera shot: ``n`` frames of a camera moving ``turn_deg`` along the ring of
    :func:`loop_trajectory` (a dolly round the room's objects), rendered like
    :func:`make_long_scene` and returned in its layout (scene, extrinsics, intrinsics, images,
    depth): footage with a known camera for every frame (the Blender camera-tracking tests)."""
    n = _check_n(n)
    base = make_scene("room", num_views=1, height=height, width=width, fov_deg=fov_deg, seed=seed, **scene_options)
    steps = max(n, int(round(n * 360.0 / float(turn_deg))))
    ext = loop_trajectory(base, steps)[:n]
    ks = np.tile(base.config.intrinsics, (n, 1, 1))
    images, depth = base.render_views(ext, ks, height=height, width=width)
    scene = dataclasses.replace(base, images=images, depth=depth, extrinsics=ext[:, :3, :].copy(), intrinsics=ks,
                                primitive_index=None, config=dataclasses.replace(base.config, num_views=n))
    return scene, ext, ks, images, depth


# --------------------------------------------------------------------------- measures


def covisibility(depth_i: np.ndarray, k_i: np.ndarray, w2c_i: np.ndarray, depth_j: np.ndarray, k_j: np.ndarray,
                 w2c_j: np.ndarray, rel_tol: float = 0.05) -> float:
    """Fraction of view i's valid pixels that view j sees too, by the true geometry.

    Every pixel of i with a valid depth (> 0, finite) is back-projected to the world
    (:func:`core.points.depth_to_points`), projected into j and counted when it lands inside
    j's image, in front of it, on a pixel whose depth agrees with its own depth in j within
    ``rel_tol`` (relative): a point hidden behind another surface in j does not count.
    1 for a view with itself; 0 when j sees none of what i sees.  Nearest-pixel lookup, so a
    few points on depth edges may be missed.
    """
    di = np.asarray(depth_i, np.float64)
    dj = np.asarray(depth_j, np.float64)
    valid = np.isfinite(di) & (di > 0)
    total = int(valid.sum())
    if total == 0:
        return 0.0
    world = depth_to_points(di, np.asarray(k_i, np.float64), conv.as_4x4(np.asarray(w2c_i, np.float64)),
                            dtype=np.float64)[valid]
    ej = conv.as_4x4(np.asarray(w2c_j, np.float64))
    cam = world @ ej[:3, :3].T + ej[:3, 3]
    z = cam[:, 2]
    front = z > 1e-9
    proj = cam[front] @ np.asarray(k_j, np.float64).T
    z = z[front]
    col = np.floor(proj[:, 0] / z)
    row = np.floor(proj[:, 1] / z)
    h, w = dj.shape
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    seen = dj[row[inside].astype(np.int64), col[inside].astype(np.int64)]
    ok = np.isfinite(seen) & (seen > 0) & (np.abs(seen - z[inside]) <= rel_tol * z[inside])
    return float(ok.sum()) / total


def ate(pred_w2c: np.ndarray, true_w2c: np.ndarray) -> float:
    """Absolute trajectory error in percent of the true trajectory's length.

    The predicted camera centres are mapped onto the true ones by the least-squares Sim(3)
    (Umeyama, :func:`core.geometry.umeyama_sim3`); the result is the RMS distance between
    mapped and true centres divided by the true path length (the sum of the distances
    between consecutive true centres), times 100.  Invariant to any Sim(3) of the prediction;
    0 for the truth.  Poses: (N, 3|4, 4) world-to-camera, N >= 3.
    """
    from ..geometry import apply_sim3_to_points, umeyama_sim3

    pred = conv.camera_centers(np.asarray(pred_w2c, np.float64))
    true = conv.camera_centers(np.asarray(true_w2c, np.float64))
    if pred.shape != true.shape or pred.ndim != 2 or len(pred) < 3:
        raise ValueError(f"pred_w2c, true_w2c: expected the same (N >= 3, 3|4, 4) shape, got "
                         f"{np.shape(pred_w2c)} and {np.shape(true_w2c)}")
    length = float(np.linalg.norm(np.diff(true, axis=0), axis=1).sum())
    if not length > 0:
        raise ValueError("true_w2c: the true cameras do not move (zero trajectory length)")
    r, t, s = umeyama_sim3(pred, true, allow_collinear=True)
    err = apply_sim3_to_points(pred, r, t, s) - true
    return 100.0 * float(np.sqrt((err**2).sum(1).mean())) / length


__all__ = ["TRAJECTORIES", "loop_trajectory", "open_trajectory", "make_long_scene", "make_shot", "covisibility", "ate"]
