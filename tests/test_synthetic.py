"""The synthetic scene generator: exact depth, exact surface, cameras, determinism."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from da3_plugins.core import conventions as conv
from da3_plugins.core import geometry as geo
from da3_plugins.core.model.ray_pose import rays_to_cameras
from da3_plugins.core.quaternions import quat_wxyz_to_matrix
from da3_plugins.core.synthetic import (Box, Lighting, Material, Quad, SceneConfig, Sphere, SyntheticScene,
                                        generate_scene, look_at, make_scene, ray_map, render, room_quads)


@pytest.fixture(scope="module")
def open_objects():
    return make_scene("objects", num_views=4, height=63, width=84, seed=5, closed=False)


# ----------------------------------------------------------------------------- exact depth


def _analytic_depth(scene, view: int, row: int, col: int) -> float:
    """z-depth of one pixel by hand: ray-plane, ray-slab and ray-sphere closed forms
    (written independently of the primitives' own intersect methods); 0 for no hit."""
    c2w = conv.w2c_to_c2w(scene.extrinsics[view])
    d = c2w[:3, :3] @ (np.linalg.inv(scene.intrinsics[view]) @ [col + 0.5, row + 0.5, 1.0])  # camera z = 1
    o = c2w[:3, 3]
    ts = []
    for p in scene.primitives:
        if isinstance(p, Sphere):
            # |o + t d - c|^2 = r^2
            oc = o - p.centre
            a, b, c = d @ d, 2 * oc @ d, oc @ oc - p.radius**2
            disc = b * b - 4 * a * c
            if disc >= 0:
                ts += [t for t in ((-b - math.sqrt(disc)) / (2 * a), (-b + math.sqrt(disc)) / (2 * a)) if t > 0]
        elif isinstance(p, Quad):
            # plane n . x = n . c, then the hit must lie inside the rectangle
            n = np.cross(p.u, p.v)
            if abs(n @ d) > 1e-12:
                t = n @ (p.centre - o) / (n @ d)
                x = o + t * d - p.centre
                if t > 0 and abs(x @ p.u) <= (p.u @ p.u) * (1 + 1e-9) and abs(x @ p.v) <= (p.v @ p.v) * (1 + 1e-9):
                    ts.append(t)
        elif isinstance(p, Box):
            ol, dl = p.rot.T @ (o - p.centre), p.rot.T @ d
            t1, t2 = (-p.half - ol) / dl, (p.half - ol) / dl
            tn, tf = np.minimum(t1, t2).max(), np.maximum(t1, t2).min()
            if tf >= tn > 0:
                ts.append(tn)
    return min(ts) if ts else 0.0


@pytest.mark.parametrize("which", ["room_scene", "open_objects"])
def test_depth_matches_analytic_intersections(which, request):
    scene = request.getfixturevalue(which)
    rng = np.random.default_rng(0)
    n, h, w = scene.depth.shape
    checked_background = 0
    for _ in range(150):
        i, r, c = rng.integers(n), rng.integers(h), rng.integers(w)
        expected = _analytic_depth(scene, i, r, c)
        if expected == 0.0:
            assert scene.depth[i, r, c] == 0.0 and scene.primitive_index[i, r, c] == -1
            checked_background += 1
        else:
            assert scene.depth[i, r, c] == pytest.approx(expected, rel=1e-6)
    if which == "open_objects":
        assert checked_background > 0  # the sky is part of the check


def test_depth_of_a_single_plane_and_sphere_by_hand():
    # a camera at the origin looking down +z at the plane z = 5 and a sphere of radius 1 at z = 3
    k = np.array([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]])
    ext = np.concatenate([np.eye(3), np.zeros((3, 1))], 1)[None]
    wall = Quad([0, 0, 5], [10, 0, 0], [0, 10, 0])
    ball = Sphere([0, 0, 3], 1.0)
    images, depth, index = render([wall, ball], ext, k[None], 30, 40)
    u, v = conv.pixel_centres(30, 40)
    x, y = (u - 20) / 50, (v - 15) / 50  # ray (x, y, 1)
    # sphere: |t (x, y, 1) - (0, 0, 3)|^2 = 1 -> (x^2+y^2+1) t^2 - 6 t + 8 = 0, nearer root
    a = x * x + y * y + 1
    disc = 36 - 32 * a
    t_sphere = np.where(disc >= 0, (6 - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    expected = np.minimum(t_sphere, 5.0)  # the plane is at z-depth 5 for every pixel
    np.testing.assert_allclose(depth[0], expected, rtol=1e-6)
    assert set(np.unique(index)) == {0, 1} and depth.dtype == np.float32 and images.dtype == np.uint8


# ----------------------------------------------------------------------------- exact surface


@pytest.mark.parametrize("kind", ["room", "inside", "objects"])
def test_oracle_points_lie_on_the_true_surface(kind):
    scene = make_scene(kind, num_views=4, height=63, width=84, seed=1)
    rec = scene.to_reconstruction()
    assert rec.model == "ground-truth" and rec.camera_source == "input"
    assert (scene.depth > 0).all() and not scene.background.any()  # closed: no background
    pts = rec.world_points().reshape(-1, 3)
    assert scene.distance_to_surface(pts).max() < 1e-4 * scene.extent
    assert len(rec.points()) == scene.depth.size
    # texture a network can see: local contrast, saturated colours, primitives that differ
    img = scene.images.astype(np.float64)
    assert img.std() > 20 and np.abs(np.diff(img, axis=2)).mean() > 3
    flat, owner = img.reshape(-1, 3), scene.primitive_index.ravel()
    assert (flat.max(1) - flat.min(1)).mean() > 15  # not grey
    means = np.array([flat[owner == k].mean(0) for k in np.unique(owner)])
    assert means.std(0).mean() > 15


def test_open_scene_background(open_objects):
    scene = open_objects
    bg = scene.background
    assert bg.any() and (~bg).any()
    assert (scene.depth[bg] == 0).all() and (scene.primitive_index[bg] == -1).all()
    sky = np.round(np.asarray(scene.config.background) * 255).astype(np.uint8)
    assert (scene.images[bg] == sky).all()
    rec = scene.to_reconstruction()
    np.testing.assert_array_equal(rec.sky, bg)
    assert not rec.valid_mask()[bg].any()
    pts = rec.points().positions
    assert len(pts) == (~bg).sum()
    assert scene.distance_to_surface(pts).max() < 1e-4 * scene.extent


def test_sample_surface_is_on_the_surface_and_area_weighted(room_scene):
    room = room_scene
    pts = room.sample_surface(20000, seed=2)
    assert pts.shape == (20000, 3)
    assert room.distance_to_surface(pts).max() < 1e-9
    np.testing.assert_array_equal(room.sample_surface(100, seed=2), room.sample_surface(100, seed=2))
    assert not np.array_equal(room.sample_surface(100, seed=2), room.sample_surface(100, seed=3))
    # area weighting, on separated primitives (in a room, box bottoms share the floor)
    prims = [Sphere([0, 0, 0], 1.0), Box([5, 0, 0], [0.5, 1.0, 2.0]), Quad([0, 0, 9], [3, 0, 0], [0, 1, 0])]
    scene = SyntheticScene(images=np.zeros((1, 2, 2, 3), np.uint8), depth=np.ones((1, 2, 2), np.float32),
                           extrinsics=np.eye(4)[None, :3], intrinsics=np.eye(3)[None], primitives=prims)
    n = 60000
    pts = scene.sample_surface(n, seed=1)
    owner = np.argmin(np.stack([p.distance(pts) for p in prims]), 0)
    share = np.array([4 * math.pi, 2 * (2 * 4 + 2 * 1 + 4 * 1), 12]) / (4 * math.pi + 28 + 12)
    sigma = np.sqrt(n * share * (1 - share))
    assert np.all(np.abs(np.bincount(owner, minlength=3) - n * share) < 5 * sigma)
    # uniform within a primitive: the box (1 x 2 x 4) gets its faces by area: the two faces
    # across x are 2 x 4, across y 1 x 4, across z 1 x 2
    local = np.abs((pts[owner == 1] - prims[1].centre) / prims[1].half)
    face = np.argmax(local, 1)
    np.testing.assert_allclose(np.bincount(face, minlength=3) / len(face), [16 / 28, 8 / 28, 4 / 28], atol=0.02)


def test_visibility_and_visible_samples():
    scene = make_scene("room", num_views=4, height=63, width=84, seed=2)
    # every pixel's surface point is seen by its own view (float64 back-projection)
    world = geo.depth_to_world_points(scene.depth.astype(np.float64), scene.intrinsics, scene.extrinsics)
    vis = scene.visible_from(world.reshape(-1, 3))
    own = np.repeat(np.arange(4), 63 * 84)
    assert vis[np.arange(len(own)), own].all()
    # visible samples are on the surface, seen, and close to the rendered points; the full
    # surface also has parts no view sees (the ceiling, box bottoms, what is behind objects)
    pts = scene.sample_surface(5000, seed=1, visible=True)
    assert pts.shape == (5000, 3) and scene.distance_to_surface(pts).max() < 1e-9
    assert scene.visible_from(pts).any(1).all()
    rendered = scene.to_reconstruction().points().positions
    assert geo.nearest_distances(pts, rendered).max() < 0.05 * scene.extent
    assert not scene.visible_from(scene.sample_surface(5000, seed=1)).any(1).all()


def test_distance_to_surface_is_exact():
    box = Box([0, 0, 0], [1.0, 2.0, 3.0], rot=quat_wxyz_to_matrix(np.array([0.9, 0.1, 0.3, -0.2])))
    ball = Sphere([10, 0, 0], 2.0)
    wall = Quad([0, 0, 20], [4, 0, 0], [0, 4, 0])
    # along each primitive's normal, off its surface by a known amount
    assert ball.distance(np.array([[10, 0, 2.5], [10, 0.5, 0]])) == pytest.approx([0.5, 1.5])
    assert wall.distance(np.array([[1, 1, 20.25], [6, 0, 20], [7, 8, 20]])) == pytest.approx([0.25, 2, 5])
    face = box.centre + box.rot @ [0, 0, 3.0]
    out = face + 0.4 * box.rot[:, 2]
    assert box.distance(np.array([out, box.centre])) == pytest.approx([0.4, 1.0])
    # and a lower bound of the distance to any sampled surface point, tight for dense samples
    rng = np.random.default_rng(0)
    for prim in (box, ball, wall):
        surf = prim.sample(40000, rng)
        lo, hi = prim.bounds()
        q = rng.uniform(lo - 1, hi + 1, (300, 3))
        exact = prim.distance(q)
        sampled = geo.nearest_distances(q, surf)
        assert np.all(sampled >= exact - 1e-12)
        assert np.median(sampled - exact) < 0.05


# ----------------------------------------------------------------------------- cameras and rays


def test_ray_map_recovers_the_true_cameras_through_the_ray_route():
    """DA3's ray head predicts rays in the reference view's camera frame (its world is view 0's
    camera), so the exact rays are built in view 0's frame (``relative_to=0``) and the route's
    cameras are compared with the true poses expressed in that frame, ``w2c_i @ c2w_0``, and
    with the true K (centred principal point, where the route's QL split is exact)."""
    scene = make_scene("room", num_views=6, height=126, width=168, seed=0)
    h, w = 72, 96  # DA3's ray map: 8 cells per 14-pixel patch (9 x 12 patches)
    rays = ray_map(scene, h, w, relative_to=0)
    assert rays.shape == (6, h, w, 6)
    # the layout: view 0's rays are K^-1 of the cell centres, its origin is 0
    k = scene.intrinsics[0]
    np.testing.assert_allclose(rays[0, 5, 7, :3], [((7 + 0.5) * 168 / w - k[0, 2]) / k[0, 0],
                                                   ((5 + 0.5) * 126 / h - k[1, 2]) / k[1, 1], 1.0])
    np.testing.assert_allclose(rays[0, ..., 3:], 0, atol=1e-12)
    torch.manual_seed(0)
    ext, kk = rays_to_cameras(torch.from_numpy(rays).float()[None], torch.ones(1, 6, h, w), (126, 168))
    truth = geo.poses_relative_to(scene.extrinsics, 0)
    np.testing.assert_allclose(ext[0].double().numpy(), truth, atol=2e-5)
    np.testing.assert_allclose(kk[0].double().numpy(), scene.intrinsics, rtol=2e-5, atol=2e-3)
    # any view can be the reference: here the middle one, through the numpy wrapper
    front = make_scene("inside", num_views=3, height=56, width=84, seed=4, arc_deg=60)
    e2, k2 = geo.rays_to_cameras(front.ray_map(28, 42, relative_to=1), (56, 84))
    np.testing.assert_allclose(e2, geo.poses_relative_to(front.extrinsics, 1), atol=2e-5)
    np.testing.assert_allclose(k2, front.intrinsics, rtol=2e-5)


def test_look_at_and_intrinsics():
    ext = look_at([1.0, -2.0, 3.0], [0.0, 0.5, 0.0])
    cam = ext[:, :3] @ [0.0, 0.5, 0.0] + ext[:, 3]
    assert cam[0] == pytest.approx(0, abs=1e-12) and cam[1] == pytest.approx(0, abs=1e-12) and cam[2] > 0
    # world "up" (-y) is image up (-y of the camera)
    assert (ext[:, :3] @ [0, -1.0, 0])[1] < 0
    cfg = SceneConfig(height=126, width=168, fov_deg=90.0)
    np.testing.assert_allclose(cfg.intrinsics, [[84, 0, 84], [0, 84, 63], [0, 0, 1]])
    assert SceneConfig(focal=100.0, principal_point=(80.0, 60.0)).intrinsics[0, 2] == 80.0


def test_render_views_reproduces_the_scene():
    scene = make_scene("objects", num_views=3, height=42, width=56, seed=2)
    images, depth = scene.render_views(scene.extrinsics)
    np.testing.assert_array_equal(images, scene.images)
    np.testing.assert_array_equal(depth, scene.depth)


# ----------------------------------------------------------------------------- determinism and config


def test_deterministic_with_a_seed():
    a = make_scene("objects", num_views=3, height=28, width=42, seed=1)
    b = generate_scene(SceneConfig(kind="objects", num_views=3, height=28, width=42, seed=1))
    c = make_scene("objects", num_views=3, height=28, width=42, seed=2)
    for name in ("images", "depth", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.images, c.images) and not np.array_equal(a.extrinsics, c.extrinsics)
    assert a.seed == 1 and a.config == b.config


def test_full_ring_has_no_duplicate_view():
    scene = make_scene("objects", num_views=6, height=28, width=42, seed=0)  # 360 degrees by default
    centres = conv.camera_centers(scene.extrinsics)
    gaps = np.linalg.norm(centres - np.roll(centres, 1, 0), axis=1)
    assert gaps.min() > 1.0


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="kind"):
        make_scene("garden")
    with pytest.raises(ValueError, match="num_views"):
        make_scene(num_views=0)
    with pytest.raises(ValueError, match="height"):
        make_scene(height=1)
    with pytest.raises(ValueError, match="fov_deg"):
        make_scene(fov_deg=180)
    with pytest.raises(ValueError, match="radius"):
        Sphere([0, 0, 0], -1)
    with pytest.raises(ValueError, match="half"):
        Box([0, 0, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="u, v"):
        Quad([0, 0, 0], [1, 0, 0], [1, 1, 0])
    with pytest.raises(ValueError, match="pattern"):
        Material(pattern="marble")
    with pytest.raises(ValueError, match="materials"):
        room_quads([-1, -1, -1], [1, 1, 1], [Material()] * 2)
    with pytest.raises(ValueError, match="direction"):
        Lighting(direction=(0, 0, 0))
    with pytest.raises(ValueError, match="points"):
        make_scene(num_views=1, height=8, width=8).distance_to_surface(np.zeros((4, 2)))


def test_generation_is_fast():
    t0 = time.perf_counter()
    make_scene("room", num_views=6, height=126, width=168, seed=0)
    elapsed = time.perf_counter() - t0
    print(f"6 x 126 x 168 scene in {elapsed:.3f} s")
    assert elapsed < 5.0  # typically ~0.2 s; loose because the CPU is shared
