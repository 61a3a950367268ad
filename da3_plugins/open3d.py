"""DA3 reconstructions as Open3D geometry, cameras and fused meshes.

    from da3_plugins import open3d as da3o3d
    pcd = da3o3d.to_point_cloud(rec, conf_threshold="auto", voxel_size=0.01)
    mesh = da3o3d.fuse_tsdf(rec)
    cams = da3o3d.to_camera_parameters(rec)
    mesh, rec = da3o3d.reconstruct("photos/", model=model, output="mesh")

Every camera conversion goes through :mod:`da3_plugins.core.conventions` (Open3D's extrinsic is
the OpenCV world-to-camera matrix; its pixel centres sit at integer coordinates, so its K has
the principal point half a pixel smaller than ours).  TSDF fusion uses the tensor
``VoxelBlockGrid``, which works on Open3D 0.19 and 0.20 alike (0.20's legacy
``ScalableTSDFVolume`` integrates nothing on these machines).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import numpy as np

from .core import conventions as conv
from .core.errors import OptionError
from .core.points import resolve_conf_threshold
from .core.reconstruction import Reconstruction

try:
    import open3d as _o3d
except ImportError:  # pragma: no cover - exercised only without the extra
    _o3d = None


def _open3d():
    if _o3d is None:
        raise ImportError('da3_plugins.open3d needs Open3D: pip install "da3-plugins[open3d]"')
    return _o3d


def _check_depth(rec: Reconstruction) -> None:
    if not isinstance(rec, Reconstruction):
        raise TypeError(f"rec: expected a Reconstruction, got {type(rec).__name__}")
    if not np.any(np.isfinite(rec.depth) & (rec.depth > 0)):
        raise ValueError("rec: the reconstruction has no depth (no pixel with a finite positive depth)")


def _check_positive(name: str, value) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


# --------------------------------------------------------------------------- points


def to_point_cloud(rec: Reconstruction, *, conf_threshold: Union[None, float, str] = None, stride: int = 1,
                   voxel_size: Optional[float] = None, estimate_normals: bool = False):
    """World points of ``rec`` as an ``open3d.geometry.PointCloud`` with colours.

    Args:
        conf_threshold: keep confidence >= this (None: all valid pixels; "auto": the
            official percentile rule).
        stride: every ``stride``-th pixel in both directions.
        voxel_size: voxel down-sampling (averages positions and colours per voxel).
        estimate_normals: normals from local neighbourhoods, oriented towards the cameras
            that saw the points.
    """
    o3d = _open3d()
    _check_depth(rec)
    _check_positive("voxel_size", voxel_size)
    cloud = rec.points(conf_threshold=conf_threshold, stride=stride)
    if len(cloud) == 0:
        raise ValueError(f"conf_threshold: no point passes the threshold {conf_threshold!r}; lower it")
    pcd = o3d.geometry.PointCloud()
    pcd.points = o3d.utility.Vector3dVector(cloud.positions.astype(np.float64))
    pcd.colors = o3d.utility.Vector3dVector(cloud.colors.astype(np.float64) / 255.0)
    if estimate_normals:
        # orient before down-sampling, while every point still knows its camera
        centres = rec.camera_centers[cloud.view]
        spacing = _typical_spacing(rec, cloud.positions)
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=6 * spacing, max_nn=30))
        normals = np.asarray(pcd.normals)
        flip = ((centres - cloud.positions) * normals).sum(-1) < 0
        normals[flip] *= -1
        pcd.normals = o3d.utility.Vector3dVector(normals)
    if voxel_size is not None:
        pcd = pcd.voxel_down_sample(voxel_size)
    return pcd


def _typical_spacing(rec: Reconstruction, points: np.ndarray) -> float:
    """Distance between neighbouring pixels' points at the median depth."""
    med_depth = float(np.median(rec.depth[np.isfinite(rec.depth) & (rec.depth > 0)]))
    focal = float(np.median(rec.intrinsics[:, 0, 0]))
    return max(med_depth / focal, 1e-9)


# --------------------------------------------------------------------------- cameras


def to_camera_parameters(rec: Reconstruction, *, original_size: bool = True):
    """One ``open3d.camera.PinholeCameraParameters`` per view, and the trajectory of them all.

    Returns ``(list_of_parameters, PinholeCameraTrajectory)``.  With ``original_size`` the
    intrinsics are for the original photos (else for the processed images ``rec.images``).
    """
    o3d = _open3d()
    if original_size:
        ks, sizes = rec.intrinsics_original, rec.original_sizes
    else:
        ks, sizes = rec.intrinsics, np.tile([rec.height, rec.width], (rec.num_views, 1))
    ks = conv.intrinsics_to_integer_centres(ks)
    exts = conv.opencv_w2c_to_open3d_extrinsic(rec.extrinsics)
    params = []
    for k, (h, w), ext in zip(ks, sizes, exts):
        p = o3d.camera.PinholeCameraParameters()
        p.intrinsic = o3d.camera.PinholeCameraIntrinsic(int(w), int(h), float(k[0, 0]), float(k[1, 1]),
                                                        float(k[0, 2]), float(k[1, 2]))
        p.extrinsic = ext
        params.append(p)
    traj = o3d.camera.PinholeCameraTrajectory()
    traj.parameters = params
    return params, traj


def from_camera_parameters(params) -> Tuple[np.ndarray, np.ndarray]:
    """Open3D camera parameters -> (OpenCV world-to-camera (N, 3, 4), K (N, 3, 3) in our
    continuous pixel convention)."""
    ext = np.stack([np.asarray(p.extrinsic) for p in params])[:, :3, :]
    ks = conv.intrinsics_from_integer_centres(np.stack([np.asarray(p.intrinsic.intrinsic_matrix) for p in params]))
    return ext, ks


def to_rgbd_images(rec: Reconstruction, *, conf_threshold: Union[None, float, str] = None) -> list:
    """``open3d.geometry.RGBDImage`` per view at the processed resolution (depth in the
    reconstruction's units, depth_scale 1; pixels below ``conf_threshold`` or sky get depth 0)."""
    o3d = _open3d()
    _check_depth(rec)
    mask = rec.valid_mask(resolve_conf_threshold(conf_threshold, rec.conf))
    out = []
    for i in range(rec.num_views):
        depth = np.where(mask[i], rec.depth[i], 0).astype(np.float32)
        out.append(o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.ascontiguousarray(rec.images[i])), o3d.geometry.Image(depth),
            depth_scale=1.0, depth_trunc=float(np.finfo(np.float32).max), convert_rgb_to_intensity=False))
    return out


# --------------------------------------------------------------------------- fusion


def default_voxel_size(rec: Reconstruction) -> float:
    """1/400 of the extent of the scene's points (the 5-95% range), at least the spacing of
    neighbouring pixels at the median depth."""
    pts = rec.points(stride=max(1, min(rec.height, rec.width) // 64)).positions
    extent = float(np.linalg.norm(np.percentile(pts, 95, axis=0) - np.percentile(pts, 5, axis=0)))
    return max(extent / 400.0, _typical_spacing(rec, pts))


def fuse_tsdf(rec: Reconstruction, *, voxel_size: Optional[float] = None, sdf_trunc: Optional[float] = None,
              depth_trunc: Optional[float] = None, conf_threshold: Union[None, float, str] = None,
              device: str = "CPU:0"):
    """Fuse the depth maps into a ``open3d.geometry.TriangleMesh`` with vertex colours.

    Args:
        voxel_size: default :func:`default_voxel_size` (1/400 of the scene extent).
        sdf_trunc: truncation distance, default 4 voxels.
        depth_trunc: ignore depth beyond this, default just past the largest depth.
        conf_threshold: pixels below it (and sky) are not fused.
    """
    o3d = _open3d()
    _check_depth(rec)
    for name, v in (("voxel_size", voxel_size), ("sdf_trunc", sdf_trunc), ("depth_trunc", depth_trunc)):
        _check_positive(name, v)
    thr = resolve_conf_threshold(conf_threshold, rec.conf)
    mask = rec.valid_mask(thr)
    if not mask.any():
        raise ValueError(f"conf_threshold: no pixel passes the threshold {conf_threshold!r}; lower it")
    voxel = voxel_size or default_voxel_size(rec)
    trunc = sdf_trunc or 4.0 * voxel
    dmax = depth_trunc or float(rec.depth[mask].max()) * 1.01
    core = o3d.core
    dev = core.Device(device)
    attrs = dict(attr_names=("tsdf", "weight", "color"), attr_dtypes=(core.float32, core.float32, core.float32),
                 attr_channels=((1), (1), (3)), voxel_size=voxel, block_resolution=16, device=dev)
    ks = conv.intrinsics_to_integer_centres(rec.intrinsics)
    exts = conv.opencv_w2c_to_open3d_extrinsic(rec.extrinsics)
    mult = trunc / voxel
    frames = []
    for i in range(rec.num_views):
        depth = o3d.t.geometry.Image(core.Tensor(np.where(mask[i], rec.depth[i], 0).astype(np.float32))).to(dev)
        color = o3d.t.geometry.Image(core.Tensor(rec.images[i].astype(np.float32) / 255.0)).to(dev)
        frames.append((depth, color, core.Tensor(ks[i], core.float64), core.Tensor(exts[i], core.float64)))
    # size the hash map from the blocks the frames touch (a fixed large count costs GBs)
    probe = o3d.t.geometry.VoxelBlockGrid(block_count=16, **attrs)
    touched = np.unique(np.concatenate([
        probe.compute_unique_block_coordinates(d, k, e, 1.0, dmax, mult).cpu().numpy() for d, _, k, e in frames]), axis=0)
    grid = o3d.t.geometry.VoxelBlockGrid(block_count=int(len(touched) * 1.2) + 64, **attrs)
    for depth, color, k, ext in frames:
        blocks = grid.compute_unique_block_coordinates(depth, k, ext, 1.0, dmax, mult)
        grid.integrate(blocks, depth, color, k, ext, 1.0, dmax, mult)
    # weight_threshold 1: keep surfaces seen by a single view (the default 3 drops them)
    mesh = grid.extract_triangle_mesh(weight_threshold=1.0).to_legacy()
    if len(mesh.vertices) == 0:
        raise RuntimeError("TSDF fusion produced an empty mesh; try a larger voxel_size or sdf_trunc")
    mesh.compute_vertex_normals()
    return mesh


# --------------------------------------------------------------------------- one call


def reconstruct(images, *, model, output: str = "points", conf_threshold: Union[None, float, str] = "auto",
                voxel_size: Optional[float] = None, options=None, **option_values):
    """Photos -> ``(geometry, rec)``: ``output="points"`` gives a PointCloud, ``"mesh"`` a
    TSDF-fused TriangleMesh.  ``options`` (a :class:`~da3_plugins.core.options.ReconstructOptions`)
    and keywords named like its fields go to ``model.reconstruct``."""
    if output not in ("points", "mesh"):
        raise OptionError(f"output: expected 'points' or 'mesh', got {output!r}")
    if options is not None:
        option_values["options"] = options
    rec = model.reconstruct(images, **option_values)
    if output == "points":
        return to_point_cloud(rec, conf_threshold=conf_threshold, voxel_size=voxel_size), rec
    return fuse_tsdf(rec, conf_threshold=conf_threshold, voxel_size=voxel_size), rec


def camera_frusta(rec: Reconstruction, scale: Optional[float] = None) -> list:
    """A ``LineSet`` per view showing its camera (Open3D's own camera visualisation)."""
    o3d = _open3d()
    params, _ = to_camera_parameters(rec, original_size=False)
    if scale is None:
        scale = 0.05 * float(np.linalg.norm(np.ptp(rec.camera_centers, axis=0))) or 0.1
    out = []
    for p in params:
        ls = o3d.geometry.LineSet.create_camera_visualization(p.intrinsic, p.extrinsic, scale=scale)
        out.append(ls)
    return out


def draw(rec_or_geometry, *, title: str = "DA3") -> None:
    """Open the Open3D viewer on a Reconstruction (points + camera frusta) or any geometry."""
    o3d = _open3d()
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and os.name != "nt":
        raise RuntimeError("draw: no display here (DISPLAY is not set); save the geometry with "
                           "open3d.io.write_point_cloud / write_triangle_mesh and open it elsewhere, "
                           "or render offscreen (see examples/open3d_reconstruct.py)")
    if isinstance(rec_or_geometry, Reconstruction):
        geoms = [to_point_cloud(rec_or_geometry, conf_threshold="auto")] + camera_frusta(rec_or_geometry)
    else:
        geoms = list(rec_or_geometry) if isinstance(rec_or_geometry, (list, tuple)) else [rec_or_geometry]
    o3d.visualization.draw_geometries(geoms, window_name=title)


def render_offscreen(geometry, params, *, linear_colors: bool = True):
    """Render a mesh or point cloud through one camera with Open3D's offscreen renderer.

    ``params`` is a ``PinholeCameraParameters`` (from :func:`to_camera_parameters`); the image
    has its intrinsic's size.  Returns ``(rgb uint8 (H, W, 3), z-depth float32 (H, W))``,
    depth inf where nothing was drawn.  Headless Linux needs ``EGL_PLATFORM=surfaceless``
    (set here when no display is present) on Open3D 0.19.

    The unlit shader treats vertex colours as linear and writes sRGB; with ``linear_colors``
    the (sRGB) colours are linearised first so the render matches the photos.
    """
    o3d = _open3d()
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("EGL_PLATFORM", "surfaceless")
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    import copy

    geom = copy.deepcopy(geometry)
    attr = "vertex_colors" if hasattr(geom, "vertex_colors") else "colors"
    has_colors = geom.has_vertex_colors() if attr == "vertex_colors" else geom.has_colors()
    if linear_colors and has_colors:
        c = np.asarray(getattr(geom, attr))
        setattr(geom, attr, o3d.utility.Vector3dVector(np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)))
    w, h = params.intrinsic.width, params.intrinsic.height
    renderer = o3d.visualization.rendering.OffscreenRenderer(w, h)
    mat = o3d.visualization.rendering.MaterialRecord()
    mat.shader = "defaultUnlit"
    renderer.scene.add_geometry("geometry", geom, mat)
    renderer.scene.set_background([0, 0, 0, 1])
    renderer.setup_camera(params.intrinsic, params.extrinsic)
    rgb = np.asarray(renderer.render_to_image()).copy()
    depth = np.asarray(renderer.render_to_depth_image(z_in_view_space=True)).astype(np.float32)
    del renderer
    return rgb, depth
