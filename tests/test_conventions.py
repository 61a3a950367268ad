"""The conventions module against the host tools' own projection code where it is installed
(Blender via bpy, nerfstudio cameras) and against hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core import quaternions as quat
from helpers import random_cameras

# random_cameras come from float32 rotations, orthonormal to ~1e-7: hence atol 1e-6 below


def _cams(n=4, h=48, w=64, seed=0):
    ext, k = random_cameras(1, n, h, w, seed=seed)
    k = k[0].double().numpy()
    k[:, 0, 2] += np.linspace(-5, 7, n)  # off-centre principal points
    k[:, 1, 2] += np.linspace(3, -4, n)
    return ext[0].double().numpy(), k


def _project_cv(w2c, k, x):
    cam = x @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ k.T
    return uv[:, :2] / uv[:, 2:], cam[:, 2]


def test_rigid_round_trips():
    w2c, _ = _cams()
    w2c = w2c[:, :3]
    np.testing.assert_allclose(conv.c2w_to_w2c(conv.w2c_to_c2w(w2c)), w2c, atol=1e-6)
    np.testing.assert_allclose(conv.opengl_c2w_to_opencv_w2c(conv.opencv_w2c_to_opengl_c2w(w2c)), w2c, atol=1e-6)
    np.testing.assert_allclose(conv.blender_matrix_world_to_opencv_w2c(conv.opencv_w2c_to_blender_matrix_world(w2c)),
                               w2c, atol=1e-6)
    centres = conv.camera_centers(w2c)
    np.testing.assert_allclose(conv.w2c_to_c2w(w2c)[:, :3, 3], centres, atol=1e-6)
    with pytest.raises(ValueError, match="transforms"):
        conv.as_4x4(np.zeros((2, 3, 3)))


def test_identity_camera_in_blender_looks_along_plus_y_with_z_up():
    mw = conv.opencv_w2c_to_blender_matrix_world(np.eye(4)[:3])
    forward = mw[:3, :3] @ np.array([0, 0, -1.0])  # Blender cameras look down local -z
    up = mw[:3, :3] @ np.array([0, 1.0, 0])
    np.testing.assert_allclose(forward, [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(up, [0, 0, 1], atol=1e-6)
    # a point in front of the OpenCV camera is in front of the Blender camera
    p = np.array([[0.3, -0.2, 2.0]])
    pb = conv.points_to_blender(p)
    local = np.linalg.inv(mw) @ np.append(pb[0], 1)
    assert local[2] < 0


def test_opengl_camera_looks_down_minus_z():
    w2c, k = _cams()
    c2w_gl = conv.opencv_w2c_to_opengl_c2w(w2c)
    x = np.array([[0.1, 0.2, 0.3]])
    for i in range(len(w2c)):
        cam_cv = x @ w2c[i, :3, :3].T + w2c[i, :3, 3]
        cam_gl = (np.linalg.inv(c2w_gl[i]) @ np.append(x[0], 1))[:3]
        np.testing.assert_allclose(cam_gl, cam_cv[0] * [1, -1, -1], atol=1e-6)


def test_rescale_and_integer_centres():
    k = np.array([[100.0, 0, 32], [0, 110, 24], [0, 0, 1]])
    k2 = conv.rescale_intrinsics(k, (48, 64), (96, 128))
    np.testing.assert_allclose(k2, [[200, 0, 64], [0, 220, 48], [0, 0, 1]])
    ki = conv.intrinsics_to_integer_centres(k)
    assert (ki[0, 2], ki[1, 2]) == (31.5, 23.5)
    np.testing.assert_allclose(conv.intrinsics_from_integer_centres(ki), k)
    u, v = conv.pixel_centres(2, 3)
    assert u[0].tolist() == [0.5, 1.5, 2.5] and v[:, 0].tolist() == [0.5, 1.5]


@pytest.mark.host
def test_nerfstudio_cameras_project_like_opencv():
    torch = pytest.importorskip("torch")
    cameras_mod = pytest.importorskip("nerfstudio.cameras.cameras")
    w2c, k = _cams(n=3)
    h, w = 48, 64
    c2w = torch.from_numpy(conv.opencv_w2c_to_opengl_c2w(w2c)[:, :3, :]).float()
    cams = cameras_mod.Cameras(camera_to_worlds=c2w, fx=torch.from_numpy(k[:, 0, 0:1]).float(),
                               fy=torch.from_numpy(k[:, 1, 1:2]).float(), cx=torch.from_numpy(k[:, 0, 2:3]).float(),
                               cy=torch.from_numpy(k[:, 1, 2:3]).float(), width=w, height=h)
    for i in range(3):
        rays = cams.generate_rays(camera_indices=i)  # through pixel centres (i + 0.5, j + 0.5)
        o = rays.origins[10, 20].double().numpy()
        d = rays.directions[10, 20].double().numpy()
        uv, z = _project_cv(w2c[i], k[i], (o + 3.0 * d)[None])
        assert z[0] > 0
        np.testing.assert_allclose(uv[0], [20.5, 10.5], atol=1e-3)


@pytest.mark.host
def test_blender_camera_reproduces_opencv_projection():
    pytest.importorskip("bpy")
    import bpy
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Matrix, Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    rng = np.random.default_rng(0)
    for (w, h), (fx, fy), (cx, cy) in [((64, 48), (70.0, 70.0), (30.0, 26.0)), ((48, 64), (50.0, 58.0), (25.0, 30.0)),
                                        ((80, 40), (90.0, 75.0), (41.0, 18.0))]:
        k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        w2c, _ = _cams(n=1, seed=int(w))
        settings = conv.blender_camera_from_intrinsics(k, w, h)
        cam_data = bpy.data.cameras.new("c")
        cam_data.lens = settings["lens"]
        cam_data.sensor_width = settings["sensor_width"]
        cam_data.sensor_height = settings["sensor_height"]
        cam_data.sensor_fit = settings["sensor_fit"]
        cam_data.shift_x, cam_data.shift_y = settings["shift_x"], settings["shift_y"]
        obj = bpy.data.objects.new("c", cam_data)
        scene.collection.objects.link(obj)
        obj.matrix_world = Matrix(conv.opencv_w2c_to_blender_matrix_world(w2c[0]).tolist())
        scene.render.resolution_x, scene.render.resolution_y = settings["resolution_x"], settings["resolution_y"]
        scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = settings["pixel_aspect_x"], settings["pixel_aspect_y"]
        scene.render.resolution_percentage = 100
        bpy.context.view_layer.update()
        # points in front of the camera
        cam_pts = np.column_stack((rng.uniform(-0.5, 0.5, 10), rng.uniform(-0.4, 0.4, 10), rng.uniform(1, 3, 10)))
        world = (cam_pts - w2c[0][:3, 3]) @ w2c[0][:3, :3]
        uv, _ = _project_cv(w2c[0], k, world)
        for p, (u, v) in zip(conv.points_to_blender(world), uv):
            ndc = world_to_camera_view(scene, obj, Vector(p.tolist()))
            # Blender: x to the right from 0 at the left edge, y up from 0 at the bottom edge
            np.testing.assert_allclose([ndc.x * w, (1 - ndc.y) * h], [u, v], atol=1e-3)
        bpy.data.objects.remove(obj)


def test_quaternion_round_trip_and_blender_orientation():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1
    r = quat.quat_wxyz_to_matrix(q)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.tile(np.eye(3), (50, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(quat.matrix_to_quat_wxyz(r), q, atol=1e-9)
    # an object's local x axis, turned by its orientation, maps like a point direction
    qb = conv.orientations_to_blender(q)
    axis_world = r[:, :, 0]
    axis_blender = quat.quat_wxyz_to_matrix(qb)[:, :, 0]
    np.testing.assert_allclose(axis_blender, conv.points_to_blender(axis_world), atol=1e-9)


def test_numpy_and_torch_quaternion_twins_agree():
    torch = pytest.importorskip("torch")
    from da3_plugins.core.model import rotation as tquat

    rng = np.random.default_rng(1)
    q = rng.normal(size=(40, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r = quat.quat_wxyz_to_matrix(q)
    np.testing.assert_allclose(tquat.quat_wxyz_to_matrix(torch.from_numpy(q)).numpy(), r, atol=1e-12)
    np.testing.assert_allclose(tquat.quat_xyzw_to_matrix(torch.from_numpy(quat.quat_wxyz_to_xyzw(q))).numpy(), r,
                               atol=1e-12)
    np.testing.assert_allclose(tquat.matrix_to_quat_wxyz(torch.from_numpy(r)).numpy(), quat.matrix_to_quat_wxyz(r),
                               atol=1e-9)
    np.testing.assert_allclose(quat.quat_xyzw_to_wxyz(tquat.matrix_to_quat_xyzw(torch.from_numpy(r)).numpy()),
                               quat.matrix_to_quat_wxyz(r), atol=1e-9)
    # the product composes rotations: R(a b) = R(a) R(b)
    ab = quat.quat_wxyz_multiply(q[:20], q[20:])
    np.testing.assert_allclose(quat.quat_wxyz_to_matrix(ab), r[:20] @ r[20:], atol=1e-12)
    assert (quat.quat_positive_w(-q)[:, 0] >= 0).all()


@pytest.mark.parametrize("rows", [3, 4])
def test_invert_rigid_one_contract_in_numpy_and_torch(rows):
    torch = pytest.importorskip("torch")
    from da3_plugins.core.model.camera import invert_rigid as invert_rigid_torch

    w2c = random_cameras(1, 6, 40, 60, seed=2)[0][0].double().numpy()[:, :rows]
    inv = conv.invert_rigid(w2c)
    assert inv.shape == w2c.shape  # the layout it came in
    np.testing.assert_allclose((conv.as_4x4(inv) @ conv.as_4x4(w2c))[:, :rows], np.tile(np.eye(4)[:rows], (6, 1, 1)),
                               atol=1e-6)
    t = invert_rigid_torch(torch.from_numpy(w2c))
    assert tuple(t.shape) == w2c.shape
    np.testing.assert_allclose(t.numpy(), inv, atol=1e-12)
