"""The reconstruction: what DA3 made of a set of photos, as numpy arrays, and its scene file.

numpy only (no torch): the Blender add-on reads scene files with this module, copied into the
extension unchanged.  It imports only numpy-only modules beside it (``conventions``, ``points``,
...), written so that this also works when they are copied into another package.

Conventions (see ``docs/conventions.md``): depth is z-depth along the optical axis; poses are
OpenCV world-to-camera ``(N, 3, 4)``; intrinsics are in pixels of the *processed* images, in
continuous coordinates (the centre of pixel (col i, row j) is (i + 0.5, j + 0.5)).

The scene file (an ``.npz`` or a folder of ``.npy`` arrays, ``core/scene_io.py``) is described
in ``docs/scene-file.md``.  A scene read from a folder holds read-only memory maps: nothing here
writes into its arrays.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

try:  # inside the package
    from . import conventions as _conv
    from . import metric_scale as _scale
    from . import scene_io as _io
    from .points import (AUTO_CONF_PERCENTILE, auto_conf_threshold, depth_to_points, pixel_grid, points_of_pixels,
                         ray_matrices, resolve_conf_threshold, sample_indices)
    from .options import SceneOptions
    from .scene_io import SCHEMA_NAME, SCHEMA_VERSION, SceneFileError, SceneWriter, atomic_folder, atomic_path
except ImportError:  # copied as plain modules (the Blender extension)
    import conventions as _conv  # type: ignore[no-redef]
    import metric_scale as _scale  # type: ignore[no-redef]
    import scene_io as _io  # type: ignore[no-redef]
    from points import (AUTO_CONF_PERCENTILE, auto_conf_threshold, depth_to_points,  # type: ignore[no-redef]
                        pixel_grid, points_of_pixels, ray_matrices, resolve_conf_threshold, sample_indices)
    from options import SceneOptions  # type: ignore[no-redef]
    from scene_io import (SCHEMA_NAME, SCHEMA_VERSION, SceneFileError, SceneWriter,  # type: ignore[no-redef]
                          atomic_folder, atomic_path)

PathLike = Union[str, os.PathLike]
VIEW_BLOCK_PIXELS = 1 << 22
"""The size of the pieces of :meth:`Reconstruction.iter_points` (points; whole views)."""


@dataclass
class GaussianSet:
    """World-space 3-D Gaussians (numpy), in the frame and units of the reconstruction.

    ``rotations`` are the four numbers a Gaussian renderer (gsplat, 3DGS viewers) reads as
    a unit quaternion (w, x, y, z); DA3's adapter produces them in that slot order (see
    ``docs/network.md``), so they are stored as they come.  ``harmonics`` are colour-major
    real SH coefficients ``(G, 3, (degree+1)^2)``; ``opacities`` are in [0, 1].
    """

    means: np.ndarray  # (G, 3) float32
    scales: np.ndarray  # (G, 3) float32, linear (not log)
    rotations: np.ndarray  # (G, 4) float32
    harmonics: np.ndarray  # (G, 3, K) float32
    opacities: np.ndarray  # (G,) float32
    view: Optional[np.ndarray] = None  # (G,) int32 source view of each Gaussian

    def __post_init__(self) -> None:
        self.means = np.asanyarray(self.means, dtype=np.float32)
        g = self.means.shape[0] if self.means.ndim == 2 else -1
        checks = {
            "means": (self.means, (g, 3)),
            "scales": (np.asanyarray(self.scales, dtype=np.float32), (g, 3)),
            "rotations": (np.asanyarray(self.rotations, dtype=np.float32), (g, 4)),
            "opacities": (np.asanyarray(self.opacities, dtype=np.float32), (g,)),
        }
        for name, (arr, shape) in checks.items():
            if arr.shape != shape:
                raise ValueError(f"gaussians.{name}: expected shape {shape}, got {arr.shape}")
            setattr(self, name, arr)
        self.harmonics = np.asanyarray(self.harmonics, dtype=np.float32)
        if self.harmonics.ndim != 3 or self.harmonics.shape[:2] != (g, 3):
            raise ValueError(f"gaussians.harmonics: expected shape ({g}, 3, K), got {self.harmonics.shape}")
        k = self.harmonics.shape[2]
        if int(round(k**0.5)) ** 2 != k:
            raise ValueError(f"gaussians.harmonics: {k} coefficients is not a square (degree+1)^2")
        if self.view is not None:
            self.view = np.asanyarray(self.view, dtype=np.int32)
            if self.view.shape != (g,):
                raise ValueError(f"gaussians.view: expected shape ({g},), got {self.view.shape}")

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round(self.harmonics.shape[2] ** 0.5)) - 1


@dataclass(frozen=True)
class FrameSource:
    """The footage a scene's views are frames of (:attr:`Reconstruction.frames`).

    ``kind`` is ``"video"`` or ``"image_sequence"``; ``path`` the video file or the sequence's
    folder (as recorded: it may have moved since); ``rate`` its frames per second (0: unknown);
    ``indices`` each view's frame (0-based in a video, the file-name number in a sequence)."""

    kind: str
    path: str
    rate: float
    indices: Tuple[int, ...]


@dataclass
class PointCloud:
    """Coloured world points: ``positions (M, 3) float32``, ``colors (M, 3) uint8``,
    ``confidence (M,) float32`` (ones when the model gives none), ``view (M,) int32``."""

    positions: np.ndarray
    colors: np.ndarray
    confidence: np.ndarray
    view: np.ndarray

    def __len__(self) -> int:
        return self.positions.shape[0]


@dataclass
class Reconstruction:
    """Per-view depth, confidence and cameras of N photos (and optionally sky and Gaussians).

    Build one directly from arrays for data from elsewhere; shapes are checked here.

    Attributes:
        images: (N, H, W, 3) uint8, the processed images the network saw.
        depth: (N, H, W) float32 z-depth (relative units, metres when ``is_metric``).
        extrinsics: (N, 3, 4) float64 OpenCV world-to-camera.
        intrinsics: (N, 3, 3) float64 in pixels of the processed H x W.
        conf: (N, H, W) float32 depth confidence (>= 1 for DA3), or None.
        original_sizes: (N, 2) int64 (height, width) of the input photos; defaults to (H, W).
        pixel_transform: (N, 3, 3) float64 affine map from original to processed continuous
            pixel coordinates (scale, then crop offset); defaults to the plain rescale
            original_sizes -> (H, W).
        image_names: one name per view (file names, or ``view_0000`` ...).
        sky: (N, H, W) bool sky mask, or None.
        gaussians: a :class:`GaussianSet`, or None.
        is_metric: depth and translations are in metres.
        model: the model id or path that produced it ("" for data from elsewhere).
        options: a :class:`~da3_plugins.core.options.SceneOptions`: the reconstruction
            options of the run, ``camera_source``, ``passes``, ``image_files``; a plain
            dict (an older scene file, data from elsewhere) is read into one.
    """

    images: np.ndarray
    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    conf: Optional[np.ndarray] = None
    original_sizes: Optional[np.ndarray] = None
    pixel_transform: Optional[np.ndarray] = None
    image_names: List[str] = field(default_factory=list)
    sky: Optional[np.ndarray] = None
    gaussians: Optional[GaussianSet] = None
    is_metric: bool = False
    model: str = ""
    options: SceneOptions = field(default_factory=SceneOptions)

    def __post_init__(self) -> None:
        images = np.asanyarray(self.images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected (N, H, W, 3) uint8, got shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images: expected uint8, got {images.dtype}")
        n, h, w = images.shape[:3]
        self.images = images
        self.depth = _checked(self.depth, (n, h, w), np.float32, "depth")
        ext = np.asanyarray(self.extrinsics)
        if ext.shape == (n, 4, 4):
            ext = ext[:, :3, :]
        self.extrinsics = _checked(ext, (n, 3, 4), np.float64, "extrinsics")
        self.intrinsics = _checked(self.intrinsics, (n, 3, 3), np.float64, "intrinsics")
        if self.conf is not None:
            self.conf = _checked(self.conf, (n, h, w), np.float32, "conf")
        if self.sky is not None:
            self.sky = _checked(self.sky, (n, h, w), np.bool_, "sky")
        if self.original_sizes is None:
            self.original_sizes = np.tile(np.array([[h, w]], dtype=np.int64), (n, 1))
        self.original_sizes = _checked(self.original_sizes, (n, 2), np.int64, "original_sizes")
        if np.any(self.original_sizes < 1):
            raise ValueError("original_sizes: every height and width must be >= 1")
        if self.pixel_transform is None:
            pt = np.zeros((n, 3, 3))
            pt[:, 0, 0] = w / self.original_sizes[:, 1]
            pt[:, 1, 1] = h / self.original_sizes[:, 0]
            pt[:, 2, 2] = 1.0
            self.pixel_transform = pt
        self.pixel_transform = _checked(self.pixel_transform, (n, 3, 3), np.float64, "pixel_transform")
        names = list(self.image_names) if self.image_names is not None else []
        if not names:
            names = [f"view_{i:04d}" for i in range(n)]
        if len(names) != n:
            raise ValueError(f"image_names: expected {n} names, got {len(names)}")
        self.image_names = [str(x) for x in names]
        if self.gaussians is not None and not isinstance(self.gaussians, GaussianSet):
            raise ValueError("gaussians: expected a GaussianSet")
        self.is_metric = bool(self.is_metric)
        self.model = str(self.model)
        if not isinstance(self.options, SceneOptions):
            self.options = SceneOptions.from_saved(self.options)

    # ------------------------------------------------------------------ sizes and cameras

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def camera_source(self) -> str:
        """Where the cameras come from: "predicted", "input" (given poses) or "none" (a
        monocular model: identity poses and an assumed 60-degree field of view)."""
        return self.options.camera_source

    @property
    def camera_to_world(self) -> np.ndarray:
        """(N, 4, 4) OpenCV camera-to-world."""
        return _conv.w2c_to_c2w(self.extrinsics)

    @property
    def camera_centers(self) -> np.ndarray:
        """(N, 3) camera centres in world coordinates."""
        return _conv.camera_centers(self.extrinsics)

    @property
    def intrinsics_original(self) -> np.ndarray:
        """(N, 3, 3) intrinsics in pixels of the original photos (continuous coordinates)."""
        return np.linalg.inv(self.pixel_transform) @ self.intrinsics

    # ------------------------------------------------------------------ footage and scale

    @property
    def frames(self) -> Optional["FrameSource"]:
        """Where the views come from when they are frames of one video or image sequence (the
        scene file's ``frame_*`` options), else None -- also for older scene files, and when the
        recorded frame indices do not match the views."""
        o = self.options
        if not o.frame_source_kind or len(o.frame_indices) != self.num_views:
            return None
        return FrameSource(kind=o.frame_source_kind, path=o.frame_source, rate=float(o.frame_rate),
                           indices=tuple(int(i) for i in o.frame_indices))

    def rescaled(self, factor: float) -> "Reconstruction":
        """A copy with every length times ``factor`` (:mod:`core.metric_scale`): camera
        translations, depth, Gaussian means and sizes; images, confidence, intrinsics and
        rotations unchanged, so every projection stays exact.  ``model`` and ``is_metric`` are
        kept; the factor is recorded in ``options.extra["scale_factor"]`` (multiplied in)."""
        s = _scale.check_factor(factor)
        gs = self.gaussians
        if gs is not None:
            means, scales = _scale.scale_gaussian_arrays(gs.means, gs.scales, s)
            gs = GaussianSet(means=means, scales=scales, rotations=gs.rotations, harmonics=gs.harmonics,
                             opacities=gs.opacities, view=gs.view)
        extra = dict(self.options.extra)
        extra["scale_factor"] = float(extra.get("scale_factor", 1.0)) * s
        options = SceneOptions.from_saved({**self.options.to_saved(), **extra})
        return Reconstruction(
            images=self.images, depth=_scale.scale_points(self.depth, s).astype(np.float32),
            extrinsics=_scale.scale_extrinsics(self.extrinsics, s), intrinsics=self.intrinsics, conf=self.conf,
            original_sizes=self.original_sizes, pixel_transform=self.pixel_transform, image_names=self.image_names,
            sky=self.sky, gaussians=gs, is_metric=self.is_metric, model=self.model, options=options)

    # ------------------------------------------------------------------ points

    def default_conf_threshold(self, percentile: float = AUTO_CONF_PERCENTILE) -> float:
        """The official exports' rule: min(max(1.05, P_percentile(conf)), P90(conf)); 0 without conf
        (:func:`core.points.auto_conf_threshold`)."""
        return auto_conf_threshold(self.conf, percentile)

    def valid_mask(self, conf_threshold: Optional[float] = None, drop_sky: bool = True,
                   views: Union[None, slice, List[int]] = None) -> np.ndarray:
        """(N, H, W) bool: finite positive depth, conf >= threshold, not sky (when known);
        ``views`` (a slice or indices) gives only those views' rows."""
        sel = slice(None) if views is None else views
        depth = self.depth[sel]
        mask = np.isfinite(depth) & (depth > 0)
        if conf_threshold is not None and self.conf is not None:
            mask &= self.conf[sel] >= conf_threshold
        if drop_sky and self.sky is not None:
            mask &= ~self.sky[sel]
        return mask

    def camera_points(self) -> np.ndarray:
        """(N, H, W, 3) float32 points in each camera's frame: depth * K^-1 (u, v, 1) at pixel centres."""
        return depth_to_points(self.depth, self.intrinsics)

    def world_points(self) -> np.ndarray:
        """(N, H, W, 3) float32 world points of every pixel (invalid depth gives nonsense)."""
        return depth_to_points(self.depth, self.intrinsics, self.extrinsics)

    def points(self, conf_threshold: Optional[float] = None, stride: int = 1, drop_sky: bool = True,
               views: Optional[List[int]] = None) -> PointCloud:
        """World points with colours, for the pixels that pass the filters.

        Args:
            conf_threshold: keep conf >= this; None keeps every valid pixel, "auto" uses
                :meth:`default_conf_threshold`.
            stride: take every ``stride``-th pixel in both directions (>= 1).
            drop_sky: leave out pixels of the sky mask (when the model gives one).
            views: restrict to these view indices.

        The points come view by view in ``views`` order, each view's in row-major pixel order.
        Only the chosen pixels are back-projected, straight into the result (one pass counts,
        one fills), so the memory is the result's plus one view's; a scene of memory maps is
        read view by view.  The numbers are those of :meth:`world_points` at the same pixels.
        """
        thr, stride, idx = self._point_args(conf_threshold, stride, views)
        geo = _ViewGeometry(self, idx, stride)
        keep = len(idx) * geo.pixels <= 1 << 26  # keep the masks of up to 64 MB; else count, then recompute
        masks = [self._view_mask(i, thr, stride, drop_sky) for i in idx] if keep else None
        counts = ([int(np.count_nonzero(m)) for m in masks] if keep
                  else [int(np.count_nonzero(self._view_mask(i, thr, stride, drop_sky))) for i in idx])
        out = _empty_cloud(sum(counts))
        start = 0
        for j, i in enumerate(idx):
            mask = masks[j] if keep else self._view_mask(i, thr, stride, drop_sky)
            geo.fill(j, np.flatnonzero(mask), out, start)
            start += counts[j]
        return out

    def point_counts(self, conf_threshold: Optional[float] = None, stride: int = 1, drop_sky: bool = True,
                     views: Optional[List[int]] = None) -> np.ndarray:
        """(len(views),) int64: how many points :meth:`points` gives for each view (same
        arguments); reads only depth, confidence and sky, view by view."""
        thr, stride, idx = self._point_args(conf_threshold, stride, views)
        return np.array([np.count_nonzero(self._view_mask(i, thr, stride, drop_sky)) for i in idx], np.int64)

    def iter_points(self, conf_threshold: Optional[float] = None, stride: int = 1, drop_sky: bool = True,
                    views: Optional[List[int]] = None, max_points: Optional[int] = None) -> Iterator[PointCloud]:
        """:meth:`points` in pieces of whole views (at most ``max_points`` points each, default
        :data:`VIEW_BLOCK_PIXELS`, unless one view has more; views without points are skipped):
        their concatenation is :meth:`points` of the same arguments.  Memory stays that of one
        piece, for writers that stream to a file."""
        thr, stride, idx = self._point_args(conf_threshold, stride, views)
        max_points = VIEW_BLOCK_PIXELS if max_points is None else int(max_points)
        geo = _ViewGeometry(self, idx, stride)
        group: List[Tuple[int, np.ndarray]] = []
        held = 0

        def piece() -> PointCloud:
            out = _empty_cloud(held)
            start = 0
            for j, index in group:
                geo.fill(j, index, out, start)
                start += len(index)
            return out

        for j, i in enumerate(idx):
            index = np.flatnonzero(self._view_mask(i, thr, stride, drop_sky))
            if group and held + len(index) > max_points:
                yield piece()
                group, held = [], 0
            if len(index):
                group.append((j, index))
                held += len(index)
        if group:
            yield piece()

    def sample_points(self, max_points: int, conf_threshold: Optional[float] = None, stride: int = 1,
                      seed: int = 0, finite: bool = False) -> Tuple[PointCloud, int]:
        """``(sample, total)``: :meth:`points` (with ``finite``, only finite positions), and above
        ``max_points`` a random subset in their order (:func:`~.points.sample_indices`: memory
        for the sample only); ``total`` is the number of points sampled from.

        Two passes view by view, holding only the sample (a scene of memory maps stays on disk):
        the first counts (from the masks; positions are computed only when they might overflow
        to inf), the second back-projects the picked pixels only."""
        return self._sample_points(max_points, conf_threshold, stride, seed, finite, True)

    def _sample_points(self, max_points: int, conf_threshold, stride: int, seed: int, finite: bool,
                       attributes: bool) -> Tuple[PointCloud, int]:
        """:meth:`sample_points`; ``attributes=False`` leaves the sample's confidence and view
        empty (length 0), for writers that need only positions and colours (less memory)."""
        thr, stride, idx = self._point_args(conf_threshold, stride, None)
        geo = _ViewGeometry(self, idx, stride)

        def indices(j: int) -> np.ndarray:  # view j's flat grid indices of the points to sample from
            index = np.flatnonzero(self._view_mask(idx[j], thr, stride, True))
            if finite and len(index) and not geo.surely_finite(j, index):
                pts = points_of_pixels(geo.depth(j), geo.mt[j], geo.centre[j], geo.pix, index)
                index = index[np.isfinite(pts).all(1)]
            return index

        counts = [len(indices(j)) for j in range(len(idx))]
        total = int(sum(counts))
        pick = sample_indices(total, int(max_points), seed) if total > max_points else None
        out = _empty_cloud(total if pick is None else len(pick), attributes)
        start = at = 0
        for j in range(len(idx)):
            lo, hi = (0, counts[j]) if pick is None else np.searchsorted(pick, [start, start + counts[j]])
            if hi > lo:
                index = indices(j)
                if pick is not None:
                    index = index[pick[lo:hi] - start]
                geo.fill(j, index, out, at)
                at += len(index)
            start += counts[j]
        return out, total

    def _point_args(self, conf_threshold, stride, views) -> Tuple[Optional[float], int, List[int]]:
        """The checked arguments of the point methods: (threshold, stride, view indices)."""
        thr = resolve_conf_threshold(conf_threshold, self.conf)
        if int(stride) != stride or stride < 1:
            raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
        idx = list(range(self.num_views)) if views is None else [int(i) for i in views]
        for i in idx:
            if not 0 <= i < self.num_views:
                raise ValueError(f"views: index {i} out of range for {self.num_views} views")
        return thr, int(stride), idx

    def _view_mask(self, i: int, thr: Optional[float], stride: int, drop_sky: bool) -> np.ndarray:
        """(h, w) bool on view ``i``'s strided grid: ``valid_mask(thr, drop_sky)[i, ::stride, ::stride]``."""
        depth = self.depth[i, ::stride, ::stride]
        mask = np.isfinite(depth) & (depth > 0)
        if thr is not None and self.conf is not None:
            mask &= self.conf[i, ::stride, ::stride] >= thr
        if drop_sky and self.sky is not None:
            mask &= ~self.sky[i, ::stride, ::stride]
        return mask

    # ------------------------------------------------------------------ scene file

    def save(self, path: PathLike, form: str = "auto") -> Path:
        """Write the scene (atomically); returns the path written.

        ``form="npz"``: one compressed ``.npz`` (appended to ``path`` unless it ends so).
        ``form="folder"``: a folder at ``path`` of ``scene.json`` and one ``.npy`` per array
        (fast, uncompressed, read back memory-mapped: for scenes larger than memory).
        ``form="auto"``: a folder when ``path`` is an existing scene folder, else npz (so
        ``save("x")`` writes ``x.npz``).  See ``docs/scene-file.md``."""
        target, form = _io.save_target(path, form)
        header = _io.header_of(self.image_names, self.is_metric, self.model, self.options)
        arrays: Dict[str, np.ndarray] = {
            "images": self.images, "depth": self.depth, "extrinsics": self.extrinsics,
            "intrinsics": self.intrinsics, "original_sizes": self.original_sizes,
            "pixel_transform": self.pixel_transform,
        }
        if self.conf is not None:
            arrays["conf"] = self.conf
        if self.sky is not None:
            arrays["sky"] = self.sky
        if self.gaussians is not None:
            g = self.gaussians
            arrays.update(gs_means=g.means, gs_scales=g.scales, gs_rotations=g.rotations,
                          gs_harmonics=g.harmonics, gs_opacities=g.opacities)
            if g.view is not None:
                arrays["gs_view"] = g.view
        if form == "folder":
            return _io.write_folder(target, header, arrays)
        return _io.write_npz(target, header, arrays)

    @classmethod
    def load(cls, path: PathLike, mmap: bool = True) -> "Reconstruction":
        """Read a scene: an ``.npz`` file, or a scene folder (or its ``scene.json``).

        From a folder, with ``mmap`` (the default), the per-pixel arrays and the Gaussians are
        read-only memory maps (``numpy.memmap``): nothing is read until used.  Raises
        :class:`SceneFileError` naming the file or folder (and the array) on any problem."""
        path, header, arrays = _io.read_scene(path, mmap)
        gaussians = None
        if "gs_means" in arrays:
            for key in ("gs_scales", "gs_rotations", "gs_harmonics", "gs_opacities"):
                if key not in arrays:
                    raise SceneFileError(f"{path}: the array {key!r} is missing (gs_means is there)")
            try:
                gaussians = GaussianSet(arrays["gs_means"], arrays["gs_scales"], arrays["gs_rotations"],
                                        arrays["gs_harmonics"], arrays["gs_opacities"], arrays.get("gs_view"))
            except ValueError as exc:
                raise SceneFileError(f"{path}: bad Gaussians ({exc})") from None
        try:
            return cls(
                images=arrays["images"], depth=arrays["depth"], extrinsics=arrays["extrinsics"],
                intrinsics=arrays["intrinsics"], conf=arrays.get("conf"),
                original_sizes=arrays.get("original_sizes"), pixel_transform=arrays.get("pixel_transform"),
                image_names=header["image_names"], sky=arrays.get("sky"), gaussians=gaussians,
                is_metric=header["is_metric"], model=header["model"],
                options=SceneOptions.from_saved(header["options"]),
            )
        except (TypeError, ValueError) as exc:
            raise SceneFileError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------- helpers


class _ViewGeometry:
    """The back-projection numbers of some views (``idx``) on a strided grid, and the filling of
    :class:`PointCloud` rows from chosen pixels (:func:`core.points.points_of_pixels`)."""

    def __init__(self, rec: "Reconstruction", idx: List[int], stride: int) -> None:
        self.rec, self.idx, self.stride = rec, idx, stride
        # per view as depth_to_points makes them (float64, cast once): the same bits as world_points
        self.mt, self.centre = ray_matrices(rec.intrinsics[idx], rec.extrinsics[idx]) if idx else (None, None)
        self.pix = pixel_grid(rec.height, rec.width, stride)
        self.pixels = len(self.pix)

    def depth(self, j: int) -> np.ndarray:
        s = self.stride
        return self.rec.depth[self.idx[j], ::s, ::s].reshape(-1)

    def surely_finite(self, j: int, index: np.ndarray) -> bool:
        """Every point of these pixels is finite, by a bound (no back-projection): finite
        numbers and ``max|ray| * max depth + max|centre|`` far below float32's overflow."""
        mt, c = self.mt[j].astype(np.float64), self.centre[j].astype(np.float64)
        if not (np.isfinite(mt).all() and np.isfinite(c).all()):
            return False
        top = float(np.max(np.take(self.depth(j), index)))  # finite, positive: the masks say so
        ray = float((np.abs(mt) * np.array([[self.rec.width], [self.rec.height], [1.0]])).sum(0).max())
        return ray * top * 2 + float(np.abs(c).max()) * 2 < 1e37

    def fill(self, j: int, index: np.ndarray, out: PointCloud, start: int) -> None:
        """Rows ``start:start+len(index)`` of ``out``: view ``idx[j]``'s points at grid pixels ``index``."""
        rec, s, i = self.rec, self.stride, self.idx[j]
        rows = slice(start, start + len(index))
        points_of_pixels(self.depth(j), self.mt[j], self.centre[j], self.pix, index, out=out.positions[rows])
        np.take(rec.images[i, ::s, ::s].reshape(-1, 3), index, axis=0, out=out.colors[rows], mode="clip")
        if len(out.view) == 0:  # a sample without attributes (Reconstruction._sample_points)
            return
        if rec.conf is not None:
            np.take(rec.conf[i, ::s, ::s].reshape(-1), index, out=out.confidence[rows], mode="clip")
        else:
            out.confidence[rows] = 1.0
        out.view[rows] = i


def _empty_cloud(n: int, attributes: bool = True) -> PointCloud:
    """Positions and colours of ``n`` points, and their confidence and view unless ``attributes`` is False."""
    m = n if attributes else 0
    return PointCloud(np.empty((n, 3), np.float32), np.empty((n, 3), np.uint8), np.empty(m, np.float32),
                      np.empty(m, np.int32))


def _subset(c: PointCloud, sel) -> PointCloud:
    return PointCloud(c.positions[sel], c.colors[sel], c.confidence[sel], c.view[sel])


def _checked(arr, shape: Tuple[int, ...], dtype, name: str) -> np.ndarray:
    a = np.asanyarray(arr)
    if a.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {a.shape}")
    if dtype is np.bool_:
        if a.dtype != np.bool_:
            raise ValueError(f"{name}: expected a boolean mask, got {a.dtype}")
        return a
    if dtype is np.int64:
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name}: expected integers, got {a.dtype}")
        return a.astype(np.int64)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected numbers, got {a.dtype}")
    return a.astype(dtype, copy=False)


__all__ = ["FrameSource", "GaussianSet", "PointCloud", "Reconstruction", "SCHEMA_NAME", "SCHEMA_VERSION", "SceneFileError",
           "SceneWriter", "atomic_folder", "atomic_path"]
