"""Geometry and metrics: back-projection, Sim(3), pose AUC, depth metrics, Chamfer / F-score."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from da3_plugins.core import conventions as conv
from da3_plugins.core import geometry as geo
from da3_plugins.core.points import depth_to_points
from da3_plugins.core.quaternions import quat_wxyz_to_matrix
from da3_plugins.core.synthetic import make_scene


@pytest.fixture(scope="module")
def scene(room_scene):
    return room_scene


@pytest.fixture(scope="module")
def official():
    """The official benchmark's metric code, as an independent oracle (if installed)."""
    pytest.importorskip("open3d")
    return pytest.importorskip("depth_anything_3.bench.utils")


def _rotation(axis, deg: float) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    half = math.radians(deg) / 2
    return quat_wxyz_to_matrix(np.concatenate(([math.cos(half)], math.sin(half) * axis)))


def _random_sim3(rng):
    q = rng.normal(size=4)
    return quat_wxyz_to_matrix(q / np.linalg.norm(q)), rng.normal(size=3) * 2, float(rng.uniform(0.3, 3))


# ----------------------------------------------------------------------------- points


def test_depth_to_camera_points_by_hand():
    # 2 x 3 image, f = 2, principal point at the image centre (1.5, 1)
    k = np.array([[2.0, 0, 1.5], [0, 2.0, 1.0], [0, 0, 1]])
    depth = np.full((1, 2, 3), 4.0, np.float32)
    pts = geo.depth_to_camera_points(depth, k[None])
    assert pts.shape == (1, 2, 3, 3) and pts.dtype == np.float32
    # pixel (col 0, row 0) has its centre at (0.5, 0.5): x = (0.5 - 1.5) / 2 * 4, y = (0.5 - 1) / 2 * 4
    np.testing.assert_allclose(pts[0, 0, 0], [-2.0, -1.0, 4.0])
    np.testing.assert_allclose(pts[0, 1, 2], [2.0, 1.0, 4.0])
    # one (H, W) map with one K, float64 in -> float64 out; torch in -> torch out
    single = geo.depth_to_camera_points(depth[0].astype(np.float64), k)
    assert single.shape == (2, 3, 3) and single.dtype == np.float64
    t = geo.depth_to_camera_points(torch.from_numpy(depth), torch.from_numpy(k[None]))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), pts)


def test_depth_to_world_points_match_the_reconstruction_and_project_back(scene):
    rec = scene.to_reconstruction()
    world = geo.depth_to_world_points(scene.depth, scene.intrinsics, scene.extrinsics)
    np.testing.assert_allclose(world, rec.world_points(), atol=1e-5)
    # project back: every point lands on its own pixel centre
    w64 = geo.depth_to_world_points(scene.depth.astype(np.float64), scene.intrinsics, scene.extrinsics)
    cam = np.einsum("nij,nhwj->nhwi", scene.extrinsics[:, :, :3], w64) + scene.extrinsics[:, None, None, :, 3]
    uv = np.einsum("nij,nhwj->nhwi", scene.intrinsics, cam)
    u, v = conv.pixel_centres(84, 112)
    np.testing.assert_allclose(uv[..., 0] / uv[..., 2], np.broadcast_to(u, uv.shape[:3]), atol=1e-6)
    np.testing.assert_allclose(uv[..., 1] / uv[..., 2], np.broadcast_to(v, uv.shape[:3]), atol=1e-6)
    np.testing.assert_allclose(cam[..., 2], scene.depth, rtol=1e-6)


def reference_depth_to_points(depth: np.ndarray, k: np.ndarray, w2c=None) -> np.ndarray:
    """Slow float64 reference of :func:`core.points.depth_to_points` for (N, H, W) depth: the
    per-pixel ``R_c2w (d K^-1 (u, v, 1)) + C`` written out with einsum, as the five copies it
    replaced computed it."""
    u, v = conv.pixel_centres(*depth.shape[1:])
    pix = np.stack((u, v, np.ones_like(u)), -1)
    cam = np.einsum("nij,hwj->nhwi", np.linalg.inv(k), pix) * depth[..., None].astype(np.float64)
    if w2c is None:
        return cam
    c2w = conv.w2c_to_c2w(w2c)
    return np.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], cam) + c2w[:, None, None, :3, 3]


def test_depth_to_points_fast_path_matches_the_reference(scene):
    ref = reference_depth_to_points(scene.depth, scene.intrinsics, scene.extrinsics)
    fast = depth_to_points(scene.depth, scene.intrinsics, scene.extrinsics)
    assert fast.dtype == np.float32 and fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(depth_to_points(scene.depth, scene.intrinsics, scene.extrinsics, dtype=np.float64),
                               ref, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(depth_to_points(scene.depth, scene.intrinsics, dtype=np.float64),
                               reference_depth_to_points(scene.depth, scene.intrinsics), atol=1e-12 * np.abs(ref).max())
    # stride: the full grid sliced; leading batch dimensions and one K broadcast
    np.testing.assert_array_equal(depth_to_points(scene.depth, scene.intrinsics, scene.extrinsics, stride=3),
                                  fast[:, ::3, ::3])
    batched = depth_to_points(np.stack([scene.depth, scene.depth]), scene.intrinsics[None], scene.extrinsics[None])
    assert batched.shape == (2,) + fast.shape
    np.testing.assert_array_equal(batched[1], fast)
    one_k = depth_to_points(scene.depth, scene.intrinsics[0])
    np.testing.assert_allclose(one_k[0], depth_to_points(scene.depth[0], scene.intrinsics[0]), atol=0)
    with pytest.raises(ValueError, match="stride"):
        depth_to_points(scene.depth, scene.intrinsics, stride=0)


def test_point_functions_reject_bad_shapes(scene):
    with pytest.raises(ValueError, match="intrinsics"):
        geo.depth_to_camera_points(scene.depth, scene.intrinsics[:2])
    with pytest.raises(ValueError, match="depth"):
        geo.depth_to_camera_points(scene.depth[..., None], scene.intrinsics)
    with pytest.raises(ValueError, match="extrinsics"):
        geo.depth_to_world_points(scene.depth, scene.intrinsics, scene.extrinsics[:3])


# ----------------------------------------------------------------------------- Sim(3)


def test_umeyama_recovers_a_known_sim3():
    rng = np.random.default_rng(0)
    r, t, s = _random_sim3(rng)
    src = rng.normal(size=(50, 3))
    r2, t2, s2 = geo.umeyama_sim3(src, geo.apply_sim3_to_points(src, r, t, s))
    np.testing.assert_allclose(r2, r, atol=1e-12)
    np.testing.assert_allclose(t2, t, atol=1e-12)
    assert isinstance(s2, float) and s2 == pytest.approx(s, rel=1e-12)
    # noisy targets: close, not exact
    noisy = geo.apply_sim3_to_points(src, r, t, s) + rng.normal(scale=1e-3, size=src.shape)
    r3, t3, s3 = geo.umeyama_sim3(src, noisy)
    assert np.abs(r3 - r).max() < 1e-2 and s3 == pytest.approx(s, rel=1e-2)
    # batched, and torch tensors are accepted
    rb, tb, sb = geo.umeyama_sim3(np.stack([src, src]), torch.from_numpy(np.stack([noisy, noisy])))
    assert rb.shape == (2, 3, 3) and tb.shape == (2, 3) and sb.shape == (2,)
    with pytest.raises(ValueError, match="dst"):
        geo.umeyama_sim3(src, src[:10])
    with pytest.raises(ValueError, match="degenerate"):
        geo.umeyama_sim3(np.zeros((5, 3)), src[:5])


def test_apply_sim3_to_poses_aligns_a_chunk(scene):
    """Two chunks of one trajectory in different frames: Umeyama on the shared cameras' centres
    and apply_sim3_to_poses bring the second chunk into the first's frame exactly."""
    rng = np.random.default_rng(1)
    r, t, s = _random_sim3(rng)
    chunk_a = scene.extrinsics
    # chunk b: the same cameras in another frame: world X_b = s R X_a + t
    chunk_b = geo.apply_sim3_to_poses(chunk_a, r, t, s)
    # the cameras carried along see the carried points at s x the depth
    world = scene.sample_surface(200, seed=0)
    cam_a = world @ chunk_a[0, :, :3].T + chunk_a[0, :, 3]
    cam_b = geo.apply_sim3_to_points(world, r, t, s) @ chunk_b[0, :, :3].T + chunk_b[0, :, 3]
    np.testing.assert_allclose(cam_b, s * cam_a, atol=1e-10)
    # back into a's frame from the shared centres
    r2, t2, s2 = geo.umeyama_sim3(conv.camera_centers(chunk_b), conv.camera_centers(chunk_a))
    np.testing.assert_allclose(geo.apply_sim3_to_poses(chunk_b, r2, t2, s2), chunk_a, atol=1e-10)
    assert s2 == pytest.approx(1 / s)
    # 4x4 input works too, the old name is the same function
    np.testing.assert_allclose(geo.apply_sim3_to_w2c(conv.as_4x4(chunk_a), r, t, s), chunk_b, atol=1e-12)
    with pytest.raises(ValueError, match="s:"):
        geo.apply_sim3_to_poses(chunk_a, r, t, -1.0)


# ----------------------------------------------------------------------------- poses


def _line_of_cameras(centres):
    """Identity-rotation OpenCV world-to-camera poses at the given centres."""
    c = np.asarray(centres, np.float64)
    w2c = np.tile(np.eye(4)[:3], (len(c), 1, 1))
    w2c[:, :, 3] = -c
    return w2c


def test_pose_errors_and_auc_hand_computed():
    # three cameras on the x axis; the prediction moves the third one sideways so that the
    # pair (0, 2) sees its baseline turned by 10.5 degrees and the pair (1, 2) by
    # atan(2 tan 10.5) = 20.34 degrees; rotations are exact
    gt = _line_of_cameras([[0, 0, 0], [1, 0, 0], [2, 0, 0]])
    side = 2 * math.tan(math.radians(10.5))
    pred = _line_of_cameras([[0, 0, 0], [1, 0, 0], [2, side, 0]])
    r_err, t_err = geo.relative_pose_errors(pred, gt)
    assert r_err.max() < 1e-5
    np.testing.assert_allclose(t_err, [0.0, 10.5, math.degrees(math.atan(2 * math.tan(math.radians(10.5))))],
                               atol=1e-5)
    auc = geo.pose_auc(pred, gt)
    # errors (0, 10.5, 20.34): per-threshold accuracies at tau = 1..T are 1/3 below 11, 2/3
    # from 11 to 20, 1 from 21 on
    assert auc["auc03"] == pytest.approx(1 / 3)
    assert auc["auc05"] == pytest.approx(1 / 3)
    assert auc["auc15"] == pytest.approx((10 * (1 / 3) + 5 * (2 / 3)) / 15)
    assert auc["auc30"] == pytest.approx((10 * (1 / 3) + 10 * (2 / 3) + 10 * 1) / 30)
    # a rotation of camera 1 about its own centre by 7.5 degrees (axis perpendicular to the
    # baseline): both pairs with camera 1 get a 7.5 degree rotation error
    pred_r = gt.copy()
    q = _rotation([0, 1, 0], 7.5)
    pred_r[1] = np.concatenate([q, (q @ gt[1, :, 3])[:, None]], 1)
    r_err, t_err = geo.relative_pose_errors(pred_r, gt)
    np.testing.assert_allclose(r_err, [7.5, 0.0, 7.5], atol=1e-5)
    assert t_err[0] == pytest.approx(7.5, abs=1e-5)


def test_pose_auc_from_errors_histogram_definition():
    # bins [0,1), [1,2), [2,3]: errors 0.5, 1.5, 2.5 and 10 -> cumsum (1/4, 2/4, 3/4) -> 1/2
    r = np.array([0.5, 1.5, 2.5, 10.0])
    auc = geo.pose_auc_from_errors(r, np.zeros(4), thresholds=(3, 30))
    assert auc["auc03"] == pytest.approx(0.5)
    assert auc["auc30"] == pytest.approx((0.25 + 0.5 + 8 * 0.75 + 20 * 1.0) / 30)
    # the last bin is closed (numpy's histogram): an error of exactly T still counts 1/T
    assert geo.pose_auc_from_errors([3.0], [0.0], (3,))["auc03"] == pytest.approx(1 / 3)
    assert geo.pose_auc_from_errors([3.01], [0.0], (3,))["auc03"] == 0.0
    # the larger of the two errors counts
    assert geo.pose_auc_from_errors([0.2], [4.5], (5,))["auc05"] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="thresholds"):
        geo.pose_auc_from_errors([1.0], [1.0], (0,))


def test_pose_auc_identity_and_invariance(scene):
    perfect = geo.pose_auc(scene.extrinsics, scene.extrinsics)
    assert perfect == {"auc03": 1.0, "auc05": 1.0, "auc15": 1.0, "auc30": 1.0}
    rng = np.random.default_rng(2)
    r, t, s = _random_sim3(rng)
    moved = geo.apply_sim3_to_poses(scene.extrinsics, r, t, s)
    assert geo.pose_auc(moved, scene.extrinsics) == perfect
    with pytest.raises(ValueError, match="gt_w2c"):
        geo.pose_auc(scene.extrinsics, scene.extrinsics[:3])
    with pytest.raises(ValueError, match="pred_w2c"):
        geo.pose_auc(scene.extrinsics[:1], scene.extrinsics[:1])


@pytest.mark.oracle
def test_pose_metrics_match_the_official_benchmark(official, scene):
    rng = np.random.default_rng(3)
    gt = conv.as_4x4(make_scene("objects", num_views=12, height=14, width=14, seed=1).extrinsics)
    for noise in (0.01, 0.05, 0.2):
        pred = gt.copy()
        for i in range(len(pred)):
            pred[i, :3, :3] = _rotation(rng.normal(size=3), float(np.degrees(noise)) * rng.uniform(0, 2)) @ pred[i, :3, :3]
            pred[i, :3, 3] += rng.normal(scale=noise * 3, size=3)
        ref = official.compute_pose(torch.from_numpy(pred), torch.from_numpy(gt))
        ours = geo.pose_auc(pred, gt)
        for key in ("auc03", "auc05", "auc15", "auc30"):
            assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


# ----------------------------------------------------------------------------- depth


def test_depth_metrics_hand_made():
    gt = np.array([[[1.0, 2.0], [4.0, 0.0]]])  # 0 = no ground truth
    pred = np.array([[[1.1, 2.0], [6.0, 9.0]]])
    assert geo.abs_rel(pred, gt) == pytest.approx((0.1 + 0 + 0.5) / 3)
    assert geo.delta1(pred, gt) == pytest.approx(2 / 3)  # 6/4 = 1.5 fails
    mask = np.array([[[True, False], [True, True]]])
    assert geo.abs_rel(pred, gt, mask=mask) == pytest.approx((0.1 + 0.5) / 2)
    # relative depth: scale-only predictions become exact after alignment
    assert geo.abs_rel(gt * 3, gt, align="median") == pytest.approx(0, abs=1e-12)
    assert geo.abs_rel(gt * 3, gt, align="lstsq") == pytest.approx(0, abs=1e-12)
    assert geo.delta1(gt * 0.1, gt, align="scale") == 1.0
    assert geo.abs_rel(gt * 2 + 5, gt, align="lstsq_shift") == pytest.approx(0, abs=1e-9)
    # least-squares scale = <p, g> / <p, p> (the official least_squares_scale_scalar)
    s, b = geo.depth_scale(pred, gt, align="lstsq")
    p, g = np.array([1.1, 2.0, 6.0]), np.array([1.0, 2.0, 4.0])
    assert s == pytest.approx(p @ g / (p @ p)) and b == 0.0
    assert geo.depth_scale(pred, gt, align="median")[0] == pytest.approx(2.0 / 2.0)
    m = geo.depth_metrics(pred, gt, align="median")
    assert m["count"] == 3 and set(m) == {"abs_rel", "delta1", "scale", "shift", "count"}
    # non-positive predictions are failures for delta1 (not accidentally inside the ratio band)
    assert geo.delta1(-gt[..., :1], gt[..., :1]) == 0.0
    # infinite / nan predictions are left out, like missing ground truth
    assert geo.abs_rel(np.where(gt > 1, pred, np.nan), gt) == pytest.approx((0 + 0.5) / 2)


def test_depth_metrics_errors():
    gt = np.ones((1, 2, 2))
    with pytest.raises(ValueError, match="mask"):
        geo.abs_rel(gt, gt, mask=np.zeros_like(gt, bool))
    with pytest.raises(ValueError, match="pred"):
        geo.abs_rel(gt[:, :1], gt)
    with pytest.raises(ValueError, match="align"):
        geo.delta1(gt, gt, align="mean")


# ----------------------------------------------------------------------------- nearest neighbours, Chamfer


def _clouds(rng, scene, n):
    """(query, points) pairs that stress a nearest-neighbour search in different ways."""
    surf = scene.sample_surface(3 * n, seed=4)
    floor = surf[np.abs(surf[:, 1] - scene.bounds[1][1]) < 1e-9][:n]
    return {
        "uniform": (rng.random((n, 3)), rng.random((n, 3))),
        "surface": (scene.sample_surface(n, seed=1) + rng.normal(0, 0.01, (n, 3)), scene.sample_surface(n, seed=2)),
        "partial (floor only)": (scene.sample_surface(n, seed=3), floor),
        "cluster + outliers": (np.concatenate([rng.normal(0, 1e-3, (n, 3)), rng.normal(0, 10, (n // 10, 3))]),
                               np.concatenate([rng.normal(0, 1e-3, (n, 3)), rng.normal(0, 10, (n // 10, 3))])),
        "far apart": (rng.random((n, 3)) + 50, rng.random((n, 3))),
        "duplicates": (rng.integers(0, 4, (n, 3)).astype(float), rng.integers(0, 4, (n, 3)).astype(float)),
        "line": (rng.random((n, 3)), np.c_[rng.random(n), np.zeros(n), np.zeros(n)]),
        "single point": (rng.random((n, 3)), rng.random((1, 3))),
    }


def test_nearest_neighbors_match_scipy(scene):
    spatial = pytest.importorskip("scipy.spatial")
    rng = np.random.default_rng(0)
    for name, (q, p) in _clouds(rng, scene, 8000).items():
        d, i = geo.nearest_neighbors(q, p)
        ref = spatial.cKDTree(p).query(q)[0]
        np.testing.assert_allclose(d, ref, rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(np.linalg.norm(p[i] - q, axis=1), d, rtol=1e-12, atol=1e-12, err_msg=name)
    # the tree can be reused; float32 and torch inputs are accepted
    tree = geo.KDTree(torch.rand(500, 3))
    assert tree.query(np.zeros((2, 3), np.float32))[0].shape == (2,)
    with pytest.raises(ValueError, match="points"):
        geo.nearest_neighbors(np.zeros((3, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="query"):
        geo.nearest_neighbors(np.zeros((3, 2)), np.zeros((4, 3)))


def test_chamfer_and_fscore_against_scipy(scene):
    spatial = pytest.importorskip("scipy.spatial")
    rng = np.random.default_rng(0)
    gt = scene.sample_surface(20000, seed=0)
    pred = scene.sample_surface(15000, seed=1) + rng.normal(0, 0.02, (15000, 3))
    thr = 0.03
    scores = geo.chamfer_and_fscore(pred, gt, threshold=thr)
    da = spatial.cKDTree(gt).query(pred)[0]
    db = spatial.cKDTree(pred).query(gt)[0]
    p, r = (da < thr).mean(), (db < thr).mean()
    assert scores.accuracy == pytest.approx(da.mean(), rel=1e-12)
    assert scores.completeness == pytest.approx(db.mean(), rel=1e-12)
    assert scores.chamfer == pytest.approx((da.mean() + db.mean()) / 2, rel=1e-12)
    assert (scores.precision, scores.recall) == (pytest.approx(p), pytest.approx(r))
    assert scores.fscore == pytest.approx(2 * p * r / (p + r))
    assert 0 < scores.fscore < 1
    assert set(scores.as_dict()) == {"acc", "comp", "overall", "precision", "recall", "fscore"}
    same = geo.chamfer_and_fscore(gt, gt, threshold=0.01)
    assert same.chamfer == 0 and same.fscore == 1
    empty = geo.chamfer_and_fscore(np.zeros((0, 3)), gt, threshold=0.01)
    assert empty.chamfer == np.inf and empty.fscore == 0
    with pytest.raises(ValueError, match="threshold"):
        geo.chamfer_and_fscore(pred, gt, threshold=0)
    with pytest.raises(ValueError, match="pred_points"):
        geo.chamfer_and_fscore(pred[:, :2], gt, threshold=0.1)


@pytest.mark.oracle
def test_chamfer_matches_the_official_evaluation(official, scene):
    rng = np.random.default_rng(5)
    gt = scene.sample_surface(6000, seed=0)
    pred = scene.sample_surface(5000, seed=1) + rng.normal(0, 0.03, (5000, 3))
    for down in (None, 0.05):
        ref = official.evaluate_3d_reconstruction(pred, gt, threshold=0.05, down_sample=down)
        ours = geo.chamfer_and_fscore(pred, gt, threshold=0.05, down_sample=down).as_dict()
        for key, value in ref.items():
            assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (down, key)


@pytest.mark.host
def test_voxel_down_sample_matches_open3d():
    o3d = pytest.importorskip("open3d")
    rng = np.random.default_rng(1)
    pts = rng.random((5000, 3)) * [2, 1, 3]
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    ref = np.asarray(pcd.voxel_down_sample(0.1).points)
    ours = geo.voxel_down_sample(pts, 0.1)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[np.lexsort(ours.T)], ref[np.lexsort(ref.T)], atol=1e-12)


def test_chamfer_200k_points_in_seconds(scene):
    spatial = pytest.importorskip("scipy.spatial")
    rng = np.random.default_rng(7)
    gt = scene.sample_surface(200_000, seed=5)
    pred = scene.sample_surface(200_000, seed=6) + rng.normal(0, 0.01, (200_000, 3))
    t0 = time.perf_counter()
    scores = geo.chamfer_and_fscore(pred, gt, threshold=0.02)
    elapsed = time.perf_counter() - t0
    print(f"Chamfer / F-score of 200k x 200k points: {elapsed:.2f} s")
    assert scores.accuracy == pytest.approx(spatial.cKDTree(gt).query(pred, workers=2)[0].mean(), rel=1e-12)
    assert elapsed < 30  # ~3 s on 2 cores; loose because the CPU is shared


# ----------------------------------------------------------------------------- frames and rays


def test_poses_relative_to_and_ray_maps(scene):
    rel = geo.poses_relative_to(scene.extrinsics, 0)
    np.testing.assert_allclose(rel[0], np.eye(4)[:3], atol=1e-12)
    # relative poses keep every camera's view of the world (moved into view 0's frame)
    x = scene.sample_surface(10, seed=0)
    x0 = x @ scene.extrinsics[0, :, :3].T + scene.extrinsics[0, :, 3]  # in view 0's frame
    for i in range(len(rel)):
        np.testing.assert_allclose(x0 @ rel[i, :, :3].T + rel[i, :, 3],
                                   x @ scene.extrinsics[i, :, :3].T + scene.extrinsics[i, :, 3], atol=1e-10)
    rays = geo.cameras_to_ray_map(scene.extrinsics, scene.intrinsics, (84, 112), (42, 56))
    assert rays.shape == (5, 42, 56, 6)
    # origins are the camera centres; directions have camera z = 1 and project to the cell
    # centres: a 2x2-pixel cell (r, c) is centred at pixel coordinates (2c + 1, 2r + 1)
    centre = conv.camera_centers(scene.extrinsics)
    np.testing.assert_allclose(rays[..., 3:], np.broadcast_to(centre[:, None, None], rays[..., 3:].shape))
    cam_dir = np.einsum("nij,nhwj->nhwi", scene.extrinsics[:, :, :3], rays[..., :3])
    uv = np.einsum("nij,nhwj->nhwi", scene.intrinsics, cam_dir)
    np.testing.assert_allclose(cam_dir[..., 2], 1.0, atol=1e-12)
    rows, cols = np.meshgrid(np.arange(42), np.arange(56), indexing="ij")
    np.testing.assert_allclose(uv[..., 0], np.broadcast_to(2 * cols + 1.0, uv.shape[:3]), atol=1e-9)
    np.testing.assert_allclose(uv[..., 1], np.broadcast_to(2 * rows + 1.0, uv.shape[:3]), atol=1e-9)
    with pytest.raises(ValueError, match="index"):
        geo.poses_relative_to(scene.extrinsics, 9)


def test_rays_to_cameras_wrapper_leaves_the_global_rng_alone(scene):
    rays = geo.cameras_to_ray_map(geo.poses_relative_to(scene.extrinsics, 2), scene.intrinsics, (84, 112), (24, 32))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    ext, k = geo.rays_to_cameras(rays, (84, 112), seed=1)
    after = torch.rand(3)
    np.testing.assert_array_equal(before.numpy(), after.numpy())
    np.testing.assert_allclose(ext, geo.poses_relative_to(scene.extrinsics, 2), atol=2e-5)
    np.testing.assert_allclose(k, scene.intrinsics, rtol=2e-5)
    with pytest.raises(ValueError, match="rays"):
        geo.rays_to_cameras(rays[..., :5], (84, 112))


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
