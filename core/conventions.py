"""Every camera and axis convention of the project, in one place (numpy only, no torch).

The core speaks one language:

* **poses** are OpenCV world-to-camera rigid transforms ``(N, 3, 4)`` (or ``(N, 4, 4)``):
  ``x_cam = R @ x_world + t`` with the camera looking down +z, x right, y down;
* **intrinsics** ``K (N, 3, 3)`` are in pixels of the image they belong to, in *continuous*
  image coordinates: pixel (col i, row j) covers ``[i, i+1) x [j, j+1)`` and its centre is
  ``(i + 0.5, j + 0.5)`` -- the COLMAP and nerfstudio convention, and the one DA3's network
  uses (it predicts the principal point at ``(W/2, H/2)``);
* the **world** of a DA3 reconstruction is whatever frame the poses live in: view 0's camera
  frame for predicted poses (y down, z forward), the user's frame for supplied poses.

Each host tool wants something else; this module is the only place where an axis is
flipped or half a pixel is added.  ``docs/conventions.md`` draws the frames.

This file is imported by the Blender add-on (copied into the extension unchanged), so it must
stay numpy-only; its one import (``quaternions``) works both inside the package and as a plain
module.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

try:  # inside the package
    from . import quaternions as _quat
except ImportError:  # copied as plain modules (the Blender extension)
    import quaternions as _quat  # type: ignore[no-redef]

# OpenCV camera axes (x right, y down, z forward) <-> OpenGL camera axes (x right, y up,
# z backward): the same matrix both ways.
CV_TO_GL_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])

# DA3 world (view 0's OpenCV camera frame: x right, y down, z forward) -> Blender world
# (X right, Y forward, Z up): x_b = x, y_b = z, z_b = -y.
CV_WORLD_TO_BLENDER_WORLD = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)

# DA3 world (y down, z forward) -> glTF world (Y up, +Z towards the viewer): flip y and z.
CV_WORLD_TO_GLTF_WORLD = np.diag([1.0, -1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------
# rigid transforms
# --------------------------------------------------------------------------------------------


def as_4x4(mats: np.ndarray) -> np.ndarray:
    """(..., 3, 4) or (..., 4, 4) rigid transforms -> (..., 4, 4) float64."""
    m = np.asarray(mats, dtype=np.float64)
    if m.shape[-2:] == (4, 4):
        return m.copy()
    if m.shape[-2:] != (3, 4):
        raise ValueError(f"expected (..., 3, 4) or (..., 4, 4) transforms, got shape {m.shape}")
    out = np.zeros(m.shape[:-2] + (4, 4))
    out[..., :3, :] = m
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(mats: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms, in the layout they came in (float64).

    The contract shared with the torch twin :func:`core.model.camera.invert_rigid`:
    (..., 3, 4) ``[R | t]`` -> (..., 3, 4) ``[R^T | -R^T t]``, and (..., 4, 4) -> (..., 4, 4)
    with last row (0, 0, 0, 1).  Uses R^T, never a general inverse, so R must be a rotation.
    """
    m = np.asarray(mats, dtype=np.float64)
    if m.shape[-2:] not in ((3, 4), (4, 4)):
        raise ValueError(f"expected (..., 3, 4) or (..., 4, 4) transforms, got shape {m.shape}")
    rt = np.swapaxes(m[..., :3, :3], -1, -2)
    out = np.zeros_like(m)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -(rt @ m[..., :3, 3:4])[..., 0]
    if m.shape[-2] == 4:
        out[..., 3, 3] = 1.0
    return out


def w2c_to_c2w(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera (..., 3|4, 4) -> OpenCV camera-to-world (..., 4, 4)."""
    return invert_rigid(as_4x4(w2c))


def c2w_to_w2c(c2w: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world (..., 3|4, 4) -> OpenCV world-to-camera (..., 3, 4)."""
    return invert_rigid(as_4x4(c2w)[..., :3, :])


def camera_centers(w2c: np.ndarray) -> np.ndarray:
    """Camera centres in world coordinates, (..., 3): C = -R^T t."""
    m = as_4x4(w2c)
    return -(np.swapaxes(m[..., :3, :3], -1, -2) @ m[..., :3, 3:4])[..., 0]


# --------------------------------------------------------------------------------------------
# OpenGL / nerfstudio
# --------------------------------------------------------------------------------------------


def opencv_w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera -> OpenGL camera-to-world (..., 4, 4), world unchanged.

    This is what nerfstudio's ``transforms.json`` and its ``Cameras.camera_to_worlds`` hold
    (camera looks down -z, y up).  The world frame is not touched.
    """
    return w2c_to_c2w(w2c) @ CV_TO_GL_CAMERA


def opengl_c2w_to_opencv_w2c(c2w_gl: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opencv_w2c_to_opengl_c2w`: (..., 3|4, 4) -> (..., 3, 4)."""
    return c2w_to_w2c(as_4x4(c2w_gl) @ CV_TO_GL_CAMERA)


# --------------------------------------------------------------------------------------------
# Blender
# --------------------------------------------------------------------------------------------


def points_to_blender(points: np.ndarray) -> np.ndarray:
    """World points (..., 3) in the DA3 (OpenCV-style) world -> Blender's Z-up world."""
    p = np.asarray(points)
    return p @ CV_WORLD_TO_BLENDER_WORLD[:3, :3].T.astype(p.dtype if p.dtype.kind == "f" else np.float64)


def orientations_to_blender(q: np.ndarray) -> np.ndarray:
    """Orientations of objects in the DA3 world (w, x, y, z) -> the same in Blender's world."""
    return _quat.matrix_to_quat_wxyz(CV_WORLD_TO_BLENDER_WORLD[:3, :3] @ _quat.quat_wxyz_to_matrix(q))


def opencv_w2c_to_blender_matrix_world(w2c: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera -> a Blender camera object's ``matrix_world`` (..., 4, 4).

    The world is taken from the DA3 frame into Blender's Z-up world
    (:data:`CV_WORLD_TO_BLENDER_WORLD`), and the camera's axes from OpenCV to Blender's
    camera axes (which are OpenGL's: looking down -z, y up).
    """
    return CV_WORLD_TO_BLENDER_WORLD @ w2c_to_c2w(w2c) @ CV_TO_GL_CAMERA


def blender_matrix_world_to_opencv_w2c(matrix_world: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opencv_w2c_to_blender_matrix_world` -> (..., 3, 4)."""
    c2w = np.linalg.inv(CV_WORLD_TO_BLENDER_WORLD) @ as_4x4(matrix_world) @ CV_TO_GL_CAMERA
    return c2w_to_w2c(c2w)


def blender_camera_from_intrinsics(k: np.ndarray, width: int, height: int) -> dict:
    """Pinhole K (pixels of a ``width`` x ``height`` image) -> Blender camera settings.

    Returns a dict with ``lens`` (mm), ``sensor_width`` and ``sensor_height`` (mm, equal), ``sensor_fit`` ('HORIZONTAL' or
    'VERTICAL'), ``shift_x``, ``shift_y``, ``resolution_x``, ``resolution_y``,
    ``pixel_aspect_x``, ``pixel_aspect_y``.

    Blender models the sensor with one size along the fitted axis; non-square pixels
    (fx != fy) become a pixel aspect ratio; the principal point becomes the lens shift, in
    units of the larger (fitted) image side, with +y up (image rows grow downwards).
    """
    k = np.asarray(k, dtype=np.float64)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    sensor = 36.0
    # Blender's camera (BKE_camera_params_compute_viewplane), in units of one pixel width:
    # the image is W wide and ycor*H tall with ycor = aspect_y/aspect_x, fx = lens*viewfac/sensor
    # and fy = fx/ycor, so non-square focal lengths become a pixel aspect ratio.
    if fx >= fy:
        asp_x, asp_y = 1.0, fx / fy
    else:
        asp_x, asp_y = fy / fx, 1.0
    ycor = asp_y / asp_x
    if width >= ycor * height:
        fit, viewfac = "HORIZONTAL", float(width)
    else:
        fit, viewfac = "VERTICAL", ycor * height
    lens = fx * sensor / viewfac
    # the optical axis sits at column cx (continuous coordinates) and at row cy counted
    # downwards, while Blender's shift is measured from the centre with y up
    shift_x = (width / 2.0 - cx) / viewfac
    shift_y = (cy - height / 2.0) * ycor / viewfac
    return {
        "lens": float(lens),
        "sensor_width": sensor,
        "sensor_height": sensor,
        "sensor_fit": fit,
        "shift_x": float(shift_x),
        "shift_y": float(shift_y),
        "resolution_x": int(width),
        "resolution_y": int(height),
        "pixel_aspect_x": float(asp_x),
        "pixel_aspect_y": float(asp_y),
    }


def blender_frame_numbers(indices, kind: str) -> np.ndarray:
    """Scene frame numbers (int64) of footage frames, as a Blender movie clip shows them.

    A clip with ``frame_start = 1`` and ``frame_offset = 0`` shows its first frame at scene
    frame 1: a video's 0-based frame ``i`` is scene frame ``i + 1``; an image sequence's file
    number ``n`` (the clip loaded from the first view's file, number ``n0``) is scene frame
    ``n - n0 + 1``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if kind == "video":
        return idx + 1
    if kind == "image_sequence":
        return idx - (idx[0] if len(idx) else 0) + 1
    raise ValueError(f"kind: expected 'video' or 'image_sequence', got {kind!r}")


def blender_frame_rate(rate: float) -> Tuple[int, float]:
    """Frames per second -> Blender's ``(render.fps, render.fps_base)``, ``fps / fps_base = rate``
    (29.97 -> (30, 1.001)); an unknown rate (<= 0) gives (24, 1.0), Blender's default."""
    rate = float(rate)
    if not rate > 0 or not np.isfinite(rate):
        return 24, 1.0
    fps = max(1, int(round(rate)))
    return fps, fps / rate


def focal_varies(fx: np.ndarray, tolerance: float = 0.01) -> bool:
    """True when focal lengths (pixels, one per frame) differ from their median by more than
    ``tolerance`` of it (a zoom): the Blender camera's lens and shift are then animated; below,
    one lens (the median frame's) serves every frame."""
    fx = np.asarray(fx, dtype=np.float64).reshape(-1)
    if len(fx) < 2:
        return False
    med = float(np.median(fx))
    return bool(np.max(np.abs(fx - med)) > tolerance * abs(med))


# --------------------------------------------------------------------------------------------
# glTF
# --------------------------------------------------------------------------------------------


def points_to_gltf(points: np.ndarray) -> np.ndarray:
    """World points (..., 3) in the DA3 world -> glTF's Y-up world (flip y and z)."""
    p = np.asarray(points)
    return p * np.array([1.0, -1.0, -1.0], dtype=p.dtype if p.dtype.kind == "f" else np.float64)


# --------------------------------------------------------------------------------------------
# Open3D
# --------------------------------------------------------------------------------------------


def intrinsics_to_integer_centres(k: np.ndarray) -> np.ndarray:
    """K in continuous coordinates -> K for tools whose pixel (i, j) centre is at (i, j).

    Open3D (``PinholeCameraIntrinsic``, RGBD back-projection, TSDF integration) and OpenCV's
    ``projectPoints`` read pixel centres at integer coordinates; the same camera has its
    principal point half a pixel smaller there.
    """
    out = np.array(k, dtype=np.float64, copy=True)
    out[..., 0, 2] -= 0.5
    out[..., 1, 2] -= 0.5
    return out


def intrinsics_from_integer_centres(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`intrinsics_to_integer_centres`."""
    out = np.array(k, dtype=np.float64, copy=True)
    out[..., 0, 2] += 0.5
    out[..., 1, 2] += 0.5
    return out


def opencv_w2c_to_open3d_extrinsic(w2c: np.ndarray) -> np.ndarray:
    """Open3D's camera ``extrinsic`` is the OpenCV world-to-camera matrix, as (..., 4, 4)."""
    return as_4x4(w2c)


# --------------------------------------------------------------------------------------------
# image resolution
# --------------------------------------------------------------------------------------------


def rescale_intrinsics(k: np.ndarray, from_hw: Tuple[int, int], to_hw) -> np.ndarray:
    """K for an image of size ``from_hw`` -> K for the same view resampled to ``to_hw``.

    Exact in continuous coordinates: row 0 (fx, skew, cx) scales by the width ratio, row 1
    (fy, cy) by the height ratio.  ``to_hw`` may be (N, 2) for per-view sizes.
    """
    out = np.array(k, dtype=np.float64, copy=True)
    fh, fw = float(from_hw[0]), float(from_hw[1])
    to = np.asarray(to_hw, dtype=np.float64)
    sy, sx = to[..., 0] / fh, to[..., 1] / fw
    out[..., 0, :] *= np.asarray(sx)[..., None]
    out[..., 1, :] *= np.asarray(sy)[..., None]
    return out


def pixel_centres(height: int, width: int, dtype=np.float64) -> Tuple[np.ndarray, np.ndarray]:
    """(u, v) grids (H, W) of pixel-centre coordinates: u = col + 0.5, v = row + 0.5."""
    v, u = np.meshgrid(np.arange(height, dtype=dtype) + 0.5, np.arange(width, dtype=dtype) + 0.5, indexing="ij")
    return u, v
