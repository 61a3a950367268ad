"""Synthetic scenes with exact ground truth, and the geometry and metric functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core import geometry as geo
from da3_plugins.core.synthetic import Box, Room, Sphere, make_scene


@pytest.fixture(scope="module")
def scene():
    return make_scene("room", num_views=5, height=84, width=112, seed=3)


# ----------------------------------------------------------------------------- synthetic


def test_depth_matches_analytic_intersections(scene):
    # pick pixels, intersect their rays analytically with every primitive by hand
    rng = np.random.default_rng(0)
    c2w = conv.w2c_to_c2w(scene.extrinsics)
    for _ in range(40):
        i, r, c = rng.integers(len(scene.depth)), rng.integers(84), rng.integers(112)
        d_cam = np.linalg.inv(scene.intrinsics[i]) @ [c + 0.5, r + 0.5, 1.0]
        d = c2w[i, :3, :3] @ d_cam
        o = c2w[i, :3, 3]
        ts = []
        for p in scene.primitives:
            if isinstance(p, Sphere):
                oc = o - p.centre
                a, b, cc = d @ d, 2 * oc @ d, oc @ oc - p.radius**2
                disc = b * b - 4 * a * cc
                if disc >= 0:
                    ts.append((-b - math.sqrt(disc)) / (2 * a))
            elif isinstance(p, Room):
                ts.append(min(((p.hi if dk > 0 else p.lo)[k] - o[k]) / dk for k, dk in enumerate(d) if dk != 0))
            elif isinstance(p, Box):
                ol, dl = p.rot.T @ (o - p.centre), p.rot.T @ d
                t1, t2 = (-p.half - ol) / dl, (p.half - ol) / dl
                tn, tf = np.minimum(t1, t2).max(), np.maximum(t1, t2).min()
                if tf >= tn > 0:
                    ts.append(tn)
        expected = min(t for t in ts if t > 0)  # d has z = 1 in the camera: t is z-depth
        assert scene.depth[i, r, c] == pytest.approx(expected, rel=1e-5)


def test_oracle_points_lie_on_the_surface(scene):
    rec = scene.to_reconstruction()
    pts = rec.world_points().reshape(-1, 3)
    assert scene.distance_to_surface(pts).max() < 1e-4 * scene.extent
    # and the surface sampler is on the surface too
    assert scene.distance_to_surface(scene.sample_surface(5000)).max() < 1e-9
    # images have texture a network can see
    assert scene.images.std() > 20


def test_scene_is_deterministic_and_seed_dependent():
    a = make_scene(num_views=2, height=28, width=42, seed=1)
    b = make_scene(num_views=2, height=28, width=42, seed=1)
    c = make_scene(num_views=2, height=28, width=42, seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.extrinsics, b.extrinsics)
    assert not np.array_equal(a.images, c.images)
    inside = make_scene("inside", num_views=4, height=28, width=42, seed=1)
    assert np.isfinite(inside.depth).all() and (inside.depth > 0).all()
    with pytest.raises(ValueError, match="kind"):
        make_scene("garden")


def test_ray_route_recovers_true_cameras():
    # the route's QL split is exact for centred principal points (as DA3's cameras are)
    scene = make_scene(num_views=3, height=56, width=84, seed=4)
    rays = scene.ray_map(h=28, w=42)
    # DA3's ray map is in the frame of the predicted world: use the scene's world as is
    ext, k = geo.rays_to_cameras(rays, (56, 84))
    np.testing.assert_allclose(ext, scene.extrinsics, atol=1e-4)
    np.testing.assert_allclose(k, scene.intrinsics, rtol=1e-4)


# ----------------------------------------------------------------------------- points and alignment


def test_depth_to_points_match_reconstruction(scene):
    rec = scene.to_reconstruction()
    np.testing.assert_allclose(geo.depth_to_world_points(scene.depth, scene.intrinsics, scene.extrinsics),
                               rec.world_points(), atol=1e-4)
    cam = geo.depth_to_camera_points(scene.depth, scene.intrinsics)
    np.testing.assert_allclose(cam[..., 2], scene.depth, rtol=1e-6)
    with pytest.raises(ValueError, match="intrinsics"):
        geo.depth_to_camera_points(scene.depth, scene.intrinsics[:2])


def test_umeyama_and_pose_transform(scene):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(100, 3))
    ang = 0.4
    r = np.array([[1, 0, 0], [0, math.cos(ang), -math.sin(ang)], [0, math.sin(ang), math.cos(ang)]])
    t, s = np.array([0.5, -1, 2]), 2.5
    r2, t2, s2 = geo.umeyama(pts, s * pts @ r.T + t)
    np.testing.assert_allclose(r2, r, atol=1e-10)
    np.testing.assert_allclose(t2, t, atol=1e-10)
    assert s2 == pytest.approx(s)
    # poses of the mapped world see the mapped points at s x the depth
    new = geo.apply_sim3_to_w2c(scene.extrinsics, r, t, s)
    world = scene.to_reconstruction().world_points()[0, ::9, ::9].reshape(-1, 3)
    cam_old = world @ scene.extrinsics[0, :, :3].T + scene.extrinsics[0, :, 3]
    cam_new = (s * world @ r.T + t) @ new[0, :, :3].T + new[0, :, 3]
    np.testing.assert_allclose(cam_new, s * cam_old, atol=1e-5)  # float32 world points


# ----------------------------------------------------------------------------- metrics


def test_pose_auc(scene):
    perfect = geo.pose_auc(scene.extrinsics, scene.extrinsics)
    assert perfect["auc3"] == pytest.approx(1.0) and perfect["auc30"] == pytest.approx(1.0)
    # scale and a global Sim(3) do not matter
    moved = geo.apply_sim3_to_w2c(scene.extrinsics, np.eye(3), np.array([1.0, 2, 3]), 3.0)
    assert geo.pose_auc(moved, scene.extrinsics)["auc3"] == pytest.approx(1.0)
    # rotate every camera of the prediction by 10 degrees about its own y axis: the relative
    # rotation errors are 0 (same rotation for all), translation errors are not
    r_err, t_err = geo.relative_pose_errors(scene.extrinsics, scene.extrinsics)
    assert r_err.max() < 1e-3 and t_err.max() < 1e-3
    # hand-computed: errors of exactly 1.5 degrees on every pair -> AUC@3 = mean(cumsum([0, 1, 1])) ...
    # bins [0,1), [1,2), [2,3]: all errors in the second bin -> cumsum (0, 1, 1) -> 2/3
    n = 3
    gt = np.tile(np.eye(4), (n, 1, 1))
    gt[:, 0, 3] = np.arange(n)  # cameras on a line
    pred = gt.copy()
    a = math.radians(1.5)
    rot = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    pred[1, :3, :3] = rot
    pred[2, :3, :3] = rot @ rot
    pred[:, :3, 3] = -(pred[:, :3, :3] @ -gt[:, :3, 3][..., None])[..., 0]  # same centres
    r_err, t_err = geo.relative_pose_errors(pred, gt)
    assert np.allclose(r_err, [1.5, 3.0, 1.5], atol=1e-6)
    auc = geo.pose_auc(pred, gt, thresholds=(3,))["auc3"]
    errs = np.maximum(r_err, t_err)
    hist = np.array([np.sum((errs >= b) & (errs < b + 1)) for b in range(3)], float)
    hist[-1] += np.sum(errs == 3)
    assert auc == pytest.approx(np.mean(np.cumsum(hist / 3)))


def test_depth_metrics():
    gt = np.array([[[1.0, 2.0], [4.0, 0.0]]])  # 0 = invalid
    pred = np.array([[[1.1, 2.0], [6.0, 9.0]]])
    assert geo.abs_rel(pred, gt) == pytest.approx((0.1 + 0 + 0.5) / 3)
    assert geo.delta1(pred, gt) == pytest.approx(2 / 3)
    assert geo.abs_rel(gt * 3, gt, align="median") == pytest.approx(0, abs=1e-12)
    assert geo.delta1(gt * 3, gt, align="scale") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mask"):
        geo.abs_rel(pred, gt, mask=np.zeros_like(gt, bool))


def test_chamfer_and_fscore_against_scipy():
    spatial = pytest.importorskip("scipy.spatial")
    rng = np.random.default_rng(0)
    a, b = rng.random((3000, 3)), rng.random((2000, 3)) + 0.05
    scores = geo.chamfer_and_fscore(a, b, threshold=0.05)
    da = spatial.cKDTree(b).query(a)[0]
    db = spatial.cKDTree(a).query(b)[0]
    assert scores.accuracy == pytest.approx(da.mean()) and scores.completeness == pytest.approx(db.mean())
    p, r = (da < 0.05).mean(), (db < 0.05).mean()
    assert scores.fscore == pytest.approx(2 * p * r / (p + r))
    same = geo.chamfer_and_fscore(a, a, threshold=0.01)
    assert same.chamfer == 0 and same.fscore == 1


def test_nearest_without_scipy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *a, **k):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    rng = np.random.default_rng(1)
    a, b = rng.random((500, 3)), rng.random((700, 3))
    expected = geo.nearest_distances(a, b)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    np.testing.assert_allclose(geo.nearest_distances(a, b), expected, atol=1e-5)


def test_ground_truth_end_to_end_through_colmap(scene, tmp_path):
    pycolmap = pytest.importorskip("pycolmap")
    from da3_plugins.core.export import write_colmap

    rec = scene.to_reconstruction()
    model = pycolmap.Reconstruction(str(write_colmap(tmp_path / "sparse", rec, conf_threshold=None, stride=4)))
    for i in range(len(rec)):
        img = model.image(i + 1)
        pose = img.cam_from_world() if callable(img.cam_from_world) else img.cam_from_world
        np.testing.assert_allclose(pose.matrix(), scene.extrinsics[i], atol=1e-9)
    xyz = np.array([p.xyz for p in model.points3D.values()])
    assert scene.distance_to_surface(xyz).max() < 1e-4 * scene.extent
