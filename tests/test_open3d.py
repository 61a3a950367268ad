"""The Open3D adapter on a synthetic scene with exact ground truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.host
o3d = pytest.importorskip("open3d")

from da3_plugins import open3d as da3o3d  # noqa: E402
from da3_plugins.core.geometry import chamfer_and_fscore, nearest_distances  # noqa: E402
from da3_plugins.core.reconstruction import Reconstruction  # noqa: E402
from da3_plugins.core.synthetic import make_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scene():
    return make_scene(num_views=8, height=126, width=168, seed=0, arc_deg=120)


@pytest.fixture(scope="module")
def rec(scene):
    r = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32))
    # non-square originals, to exercise the original-size cameras
    r.original_sizes[:] = (252, 336)
    r.pixel_transform[:] = np.diag([0.5, 0.5, 1.0])
    return r


def test_fused_mesh_matches_the_true_surface(scene, rec):
    mesh = da3o3d.fuse_tsdf(rec)
    assert len(mesh.triangles) > 1000 and mesh.has_vertex_colors()
    verts = np.asarray(mesh.vertices)
    thr = 0.01 * scene.extent
    # precision against the exact surface, recall against the visible surface
    precision = float((scene.distance_to_surface(verts) < thr).mean())
    visible = rec.points(stride=2).positions
    recall = float((nearest_distances(visible, verts) < thr).mean())
    fscore = 2 * precision * recall / (precision + recall)
    scores = chamfer_and_fscore(verts, visible, thr)
    print(f"F-score {fscore:.3f} (precision {precision:.3f}, recall {recall:.3f}), Chamfer {scores.chamfer:.4f}")
    assert fscore >= 0.95
    # vertex colours come from the photos (not black, not constant)
    colors = np.asarray(mesh.vertex_colors)
    assert 0.1 < colors.mean() < 0.9 and colors.std() > 0.05


def test_point_cloud(rec):
    pcd = da3o3d.to_point_cloud(rec, stride=2)
    assert len(pcd.points) == rec.points(stride=2).positions.shape[0]
    np.testing.assert_allclose(np.asarray(pcd.colors) * 255, rec.points(stride=2).colors, atol=1e-6)
    down = da3o3d.to_point_cloud(rec, voxel_size=0.1, estimate_normals=True)
    assert 0 < len(down.points) < len(pcd.points) and down.has_normals()
    # normals face the cameras: the floor's normals point up (-y in this world)
    pts, nrm = np.asarray(down.points), np.asarray(down.normals)
    floor = pts[:, 1] > pts[:, 1].max() - 0.05
    assert np.median(nrm[floor, 1]) < -0.9


def test_cameras_round_trip_and_project_like_the_core(scene, rec):
    params, traj = da3o3d.to_camera_parameters(rec)
    assert len(traj.parameters) == len(rec)
    ext, k = da3o3d.from_camera_parameters(params)
    np.testing.assert_allclose(ext, scene.extrinsics, atol=1e-12)
    np.testing.assert_allclose(k, rec.intrinsics_original, atol=1e-12)
    assert (params[0].intrinsic.width, params[0].intrinsic.height) == (336, 252)
    # Open3D's back-projection of a pixel (integer centre), projected by the core's camera,
    # lands on that pixel's centre (i + 0.5, j + 0.5)
    params, _ = da3o3d.to_camera_parameters(rec, original_size=False)
    depth = np.zeros((126, 168), np.float32)
    depth[40, 100] = 3.0
    pts = np.asarray(o3d.geometry.PointCloud.create_from_depth_image(
        o3d.geometry.Image(depth), params[2].intrinsic, params[2].extrinsic, depth_scale=1.0).points)
    cam = pts @ scene.extrinsics[2, :, :3].T + scene.extrinsics[2, :, 3]
    uv = cam @ scene.intrinsics[2].T
    np.testing.assert_allclose(uv[0, :2] / uv[0, 2], [100.5, 40.5], atol=1e-3)


def test_rgbd_images(rec):
    images = da3o3d.to_rgbd_images(rec)
    assert len(images) == len(rec)
    np.testing.assert_allclose(np.asarray(images[1].depth), rec.depth[1])
    np.testing.assert_array_equal(np.asarray(images[1].color), rec.images[1])


def test_offscreen_render_from_an_input_camera(tmp_path):
    # in a subprocess: the EGL renderer is best kept out of the test process
    env = dict(os.environ, EGL_PLATFORM="surfaceless")
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "open3d_reconstruct.py"), "--synthetic",
                          "-o", str(tmp_path), "--view", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(x for x in res.stdout.splitlines() if "mean |photo - render|" in x)
    diff = float(line.split("=")[1].split("(")[0])
    assert diff < 30, line  # the render shows the photo's content (another view differs by ~40)
    from PIL import Image

    img = np.asarray(Image.open(tmp_path / "render.png"))
    assert img.shape == (126, 336, 3)
    mesh = o3d.io.read_triangle_mesh(str(tmp_path / "mesh.ply"))
    assert len(mesh.triangles) > 1000
    assert "F-score" in res.stdout


def test_reconstruct_one_call(rec):
    from da3_plugins.core import random_model

    model = random_model("da3-small")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (42, 56, 3), dtype=np.uint8) for _ in range(3)]
    pcd, got = da3o3d.reconstruct(images, model=model, output="points", process_res=56, conf_threshold=None)
    assert isinstance(got, Reconstruction) and len(pcd.points) == got.depth.size
    # a random network's depth has no surface to fuse: stand in the scene's truth for the mesh path
    model.reconstruct = lambda images, **kw: rec
    mesh, same = da3o3d.reconstruct(images, model=model, output="mesh", voxel_size=0.05)
    assert isinstance(mesh, o3d.geometry.TriangleMesh) and len(mesh.triangles) > 0 and same is rec


def test_bad_input(rec):
    empty = Reconstruction(images=rec.images[:1], depth=np.zeros_like(rec.depth[:1]),
                           extrinsics=rec.extrinsics[:1], intrinsics=rec.intrinsics[:1])
    with pytest.raises(ValueError, match="no depth"):
        da3o3d.fuse_tsdf(empty)
    with pytest.raises(ValueError, match="no depth"):
        da3o3d.to_point_cloud(empty)
    with pytest.raises(ValueError, match="conf_threshold"):
        da3o3d.to_point_cloud(rec, conf_threshold=5.0)
    with pytest.raises(ValueError, match="conf_threshold"):
        da3o3d.fuse_tsdf(rec, conf_threshold=5.0)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="voxel_size"):
            da3o3d.fuse_tsdf(rec, voxel_size=bad)
        with pytest.raises(ValueError, match="voxel_size"):
            da3o3d.to_point_cloud(rec, voxel_size=bad)
    with pytest.raises(ValueError, match="output"):
        da3o3d.reconstruct([], model=None, output="voxels")


def test_missing_open3d_says_which_extra(monkeypatch):
    monkeypatch.setattr(da3o3d, "_o3d", None)
    with pytest.raises(ImportError, match=r"da3-plugins\[open3d\]"):
        da3o3d.to_point_cloud(None)


def test_draw_without_display(rec, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RuntimeError, match="no display"):
        da3o3d.draw(rec)
