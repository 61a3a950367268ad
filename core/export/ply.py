"""PLY writers: coloured point clouds and 3-D Gaussian splats (numpy only), and a 3DGS reader.

Both writers produce binary little-endian PLY files with one ``vertex`` element, written to a
temporary name and renamed (an interrupted export leaves nothing behind).  Coordinates are
those of the reconstruction's world (OpenCV-style axes for predicted poses: x right, y down,
z forward from view 0), unchanged.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import OptionError
from ..points import resolve_conf_threshold
from ..reconstruction import GaussianSet, PointCloud, Reconstruction, atomic_path

PathLike = Union[str, os.PathLike]
ConfThreshold = Union[None, float, str]

# numpy kind+size <-> PLY scalar type names (both the classic and the sized spellings are read)
_PLY_TYPES = {"f4": "float", "u1": "uchar", "i4": "int", "f8": "double", "u4": "uint", "i2": "short",
              "u2": "ushort", "i1": "char"}
_PLY_READ_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
                   "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
                   "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}

#: the property order of the original 3DGS code (f_rest_* go between f_dc_2 and opacity)
GAUSSIAN_HEAD = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
GAUSSIAN_TAIL = ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def _vertex_dtype(fields: Sequence[Tuple[str, np.ndarray]]) -> np.dtype:
    """The packed little-endian row type of (name, 1-D array) pairs (types from the arrays)."""
    return np.dtype([(name, "<" + np.asarray(arr).dtype.str[1:]) for name, arr in fields])


def _ply_header(dtype: np.dtype, count: int, comments: Sequence[str]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {c}" for c in comments]
    lines.append(f"element vertex {count}")
    lines += [f"property {_PLY_TYPES[dtype[name].str[1:]]} {name}" for name in dtype.names]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


ROWS_AT_A_TIME = 1 << 18
"""Rows packed and written at a time (one reused table)."""
POINTS_AT_A_TIME = 1 << 20
"""Points back-projected at a time by :func:`write_point_ply` (whole views, see
:meth:`Reconstruction.iter_points`)."""


class _RowWriter:
    """Packs columns into rows and writes them (bounded memory), the writing overlapped with the
    packing and back-projection of the next rows: two tables take turns, one being filled while
    a writer thread writes the other (``write`` releases the GIL).  Use as a context manager."""

    def __init__(self, fh: BinaryIO, dtype: np.dtype) -> None:
        self.fh, self.dtype = fh, dtype
        self.tables = [np.empty(ROWS_AT_A_TIME, dtype) for _ in range(2)]
        self.pending: List[Optional[Future]] = [None, None]
        self.turn = 0
        self.pool = ThreadPoolExecutor(1)  # one thread: the writes stay in order

    def write(self, fields: Sequence[Tuple[str, np.ndarray]]) -> None:
        n = len(fields[0][1])
        for start in range(0, n, ROWS_AT_A_TIME):
            k, self.turn = self.turn, 1 - self.turn
            if self.pending[k] is not None:
                self.pending[k].result()  # that table is written: reuse it (or raise the write's error)
            rows = self.tables[k][:min(ROWS_AT_A_TIME, n - start)]
            for name, arr in fields:
                rows[name] = arr[start:start + len(rows)]
            self.pending[k] = self.pool.submit(self.fh.write, rows.view(np.uint8))  # no bytes copy

    def __enter__(self) -> "_RowWriter":
        return self

    def __exit__(self, *exc) -> None:
        try:
            for f in self.pending:  # every write done (or failed) before the file closes
                if f is not None:
                    f.result()
        finally:
            self.pool.shutdown(wait=True)


def _write_vertex_ply(path: PathLike, fields: Sequence[Tuple[str, np.ndarray]], comments: Sequence[str] = ()) -> Path:
    """Write one ``vertex`` element with the given properties (types from the arrays' dtypes)."""
    n = len(fields[0][1])
    for name, arr in fields:
        if np.asarray(arr).shape != (n,):
            raise ValueError(f"{name}: expected shape ({n},), got {np.asarray(arr).shape}")
    dtype = _vertex_dtype(fields)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(_ply_header(dtype, n, comments))
            with _RowWriter(fh, dtype) as rows:
                rows.write(fields)
    return path


def _filter_cloud(cloud: PointCloud, conf_threshold: ConfThreshold, stride: int) -> PointCloud:
    """A PointCloud given directly: keep confidence >= a numeric threshold."""
    if stride != 1:
        raise ValueError(f"stride: only applies to a Reconstruction (got {stride!r} with a PointCloud)")
    if conf_threshold is None:
        return cloud
    if isinstance(conf_threshold, str):
        raise ValueError(f"conf_threshold: {conf_threshold!r} only applies to a Reconstruction; "
                         "pass a number or None with a PointCloud")
    keep = np.asarray(cloud.confidence) >= float(conf_threshold)
    return PointCloud(cloud.positions[keep], cloud.colors[keep], cloud.confidence[keep], cloud.view[keep])


def write_point_ply(path: PathLike, source: Union[Reconstruction, PointCloud], *,
                    conf_threshold: ConfThreshold = None, stride: int = 1) -> Path:
    """Write coloured points as a binary little-endian PLY; returns ``path``.

    Properties of the ``vertex`` element: ``x y z`` (float, world coordinates of the
    reconstruction), ``red green blue`` (uchar, the processed images' colours),
    ``confidence`` (float; ones when the model gives none) and ``view`` (int, source view).

    Args:
        path: the ``.ply`` file (written atomically).
        source: a Reconstruction (points back-projected from its depth, see
            :meth:`Reconstruction.points`; sky is left out) or a PointCloud.
        conf_threshold: keep confidence >= this; None keeps every point, "auto" (a
            Reconstruction only) uses the official percentile rule.
        stride: every ``stride``-th pixel in both directions (a Reconstruction only).

    A Reconstruction's points are counted, then back-projected and written
    :data:`POINTS_AT_A_TIME` at a time: memory holds one piece, never the whole cloud (a scene
    of memory maps is read view by view).

    Raises:
        ValueError: no point passes the filters, or bad arguments.
    """
    if isinstance(source, Reconstruction):  # streamed: counted, then written view by view
        thr = resolve_conf_threshold(conf_threshold, source.conf)
        total = int(source.point_counts(thr, stride).sum())
        pieces = source.iter_points(thr, stride, max_points=POINTS_AT_A_TIME)
    elif isinstance(source, PointCloud):
        cloud = _filter_cloud(source, conf_threshold, stride)
        total, pieces = len(cloud), iter([cloud])
    else:
        raise ValueError(f"source: expected a Reconstruction or a PointCloud, got {type(source).__name__}")
    if total == 0:
        raise OptionError(f"conf_threshold: no point passes the filters (threshold {conf_threshold!r}); lower it")
    dtype = np.dtype([(n, "<f4") for n in "xyz"] + [(n, "u1") for n in ("red", "green", "blue")]
                     + [("confidence", "<f4"), ("view", "<i4")])
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(_ply_header(dtype, total, ["da3-plugins point cloud (world frame of the reconstruction)"]))
            with _RowWriter(fh, dtype) as rows:
                for cloud in pieces:
                    pos = np.asarray(cloud.positions, np.float32).reshape(-1, 3)
                    col = np.asarray(cloud.colors, np.uint8).reshape(-1, 3)
                    rows.write([("x", pos[:, 0]), ("y", pos[:, 1]), ("z", pos[:, 2]),
                                ("red", col[:, 0]), ("green", col[:, 1]), ("blue", col[:, 2]),
                                ("confidence", np.asarray(cloud.confidence, np.float32)),
                                ("view", np.asarray(cloud.view, np.int32))])
    return path


def _logit(p: np.ndarray) -> np.ndarray:
    """Inverse sigmoid, with p clipped to [1e-6, 1 - 1e-6] (opacity 0 and 1 stay finite)."""
    p = np.clip(np.asarray(p, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))).astype(np.float32)


def _pixel_index_in_view(view: np.ndarray, num_views: int, pixels: int) -> np.ndarray:
    """For Gaussians laid out one per pixel: each one's row-major pixel index in its view.

    Within each view the Gaussians must come in row-major pixel order (the adapter's layout);
    views may be interleaved in chunks (as the chunked pipeline concatenates them).
    """
    counts = np.bincount(view, minlength=num_views)
    if len(counts) != num_views or np.any(counts != pixels):
        raise ValueError("prune_border: needs one Gaussian per pixel of every view (as DA3's Gaussian head makes)")
    order = np.argsort(view, kind="stable")
    idx = np.empty(len(view), np.int64)
    idx[order] = np.tile(np.arange(pixels), num_views)
    return idx


def _depth_in_view(gs: GaussianSet, rec: Reconstruction) -> np.ndarray:
    """(G,) z-depth of each Gaussian's mean in its source camera."""
    ext = rec.extrinsics[gs.view]
    return np.einsum("gj,gj->g", ext[:, 2, :3], gs.means.astype(np.float64)) + ext[:, 2, 3]


def write_gaussian_ply(path: PathLike, source: Union[Reconstruction, GaussianSet], *,
                       include_rest: bool = True, prune_border: bool = False,
                       depth_quantile: Optional[float] = None, min_opacity: float = 0.0) -> Path:
    """Write 3-D Gaussians in the PLY layout of the original 3DGS code; returns ``path``.

    Viewers (SuperSplat, antimatter15/splat, ...) and trainers (3DGS, gsplat, nerfstudio) read
    it.  Properties, all float32, in this order: ``x y z nx ny nz f_dc_0..2 [f_rest_0..]
    opacity scale_0..2 rot_0..3``:

    * ``nx ny nz`` are zeros;
    * ``f_dc_c`` is the degree-0 SH coefficient of colour channel c (R, G, B);
    * ``f_rest_*`` (with ``include_rest`` and SH degree > 0) the higher coefficients channel
      by channel, as 3DGS flattens its (3, K-1) array: all of red's, then green's, then blue's;
    * ``opacity`` is the logit of the [0, 1] opacity; ``scale_*`` are natural logs;
    * ``rot_0..3`` the quaternion in the renderer's (w, x, y, z) slot order, as stored.

    Gaussians with a non-finite value are left out.  By default every Gaussian is written;
    the official exporter's pruning is available as options.

    Args:
        path: the ``.ply`` file (written atomically).
        source: a GaussianSet, or a Reconstruction holding one.
        include_rest: write the ``f_rest_*`` properties when the set has degree > 0.
        prune_border: drop the Gaussians of the outer ``int(8/256 * H)`` rows and
            ``int(8/256 * W)`` columns of each view (the official rule).  Needs a
            Reconstruction with one Gaussian per pixel and their ``view``.
        depth_quantile: keep, per source view, the Gaussians whose mean's z-depth in that
            camera is <= this quantile of the view's Gaussians (the official export uses 0.9).
            Needs a Reconstruction and ``view``.
        min_opacity: drop Gaussians whose opacity is below this.

    Raises:
        ValueError: no Gaussians, none left after the filters, or a filter's needs unmet.
    """
    rec = source if isinstance(source, Reconstruction) else None
    if rec is None and not isinstance(source, GaussianSet):
        raise ValueError(f"source: expected a Reconstruction or a GaussianSet, got {type(source).__name__}")
    gs = rec.gaussians if rec is not None else source
    if gs is None:
        raise ValueError("gaussians: the reconstruction has no Gaussians "
                         "(run with infer_gs=True on a model with a Gaussian head)")
    if len(gs) == 0:
        raise ValueError("gaussians: the set is empty")
    keep = gs.opacities >= min_opacity
    keep &= (np.isfinite(gs.means).all(1) & np.isfinite(gs.scales).all(1) & np.isfinite(gs.rotations).all(1)
             & np.isfinite(gs.harmonics).all((1, 2)) & np.isfinite(gs.opacities))
    if prune_border or depth_quantile is not None:
        what = "prune_border" if prune_border else "depth_quantile"
        if rec is None or gs.view is None:
            raise ValueError(f"{what}: needs a Reconstruction whose Gaussians record their source view")
        if gs.view.min() < 0 or gs.view.max() >= rec.num_views:
            raise ValueError(f"gaussians.view: indices outside 0..{rec.num_views - 1}")
    if prune_border:
        h, w = rec.height, rec.width
        bh, bw = int(8 / 256 * h), int(8 / 256 * w)
        pix = _pixel_index_in_view(gs.view, rec.num_views, h * w)
        rows, cols = pix // w, pix % w
        keep &= (rows >= bh) & (rows < h - bh) & (cols >= bw) & (cols < w - bw)
    if depth_quantile is not None:
        if not 0.0 < float(depth_quantile) <= 1.0:
            raise ValueError(f"depth_quantile: expected a number in (0, 1], got {depth_quantile!r}")
        z = _depth_in_view(gs, rec)
        for v in np.unique(gs.view):
            sel = gs.view == v
            zs = z[sel]
            finite = np.isfinite(zs)
            if finite.any():
                keep[sel] &= zs <= np.quantile(zs[finite], float(depth_quantile))
    if not keep.any():
        raise ValueError("min_opacity/prune_border/depth_quantile: no Gaussian passes the filters")
    harm = gs.harmonics[keep]
    g = len(harm)
    means = gs.means[keep]
    fields: List[Tuple[str, np.ndarray]] = [("x", means[:, 0]), ("y", means[:, 1]), ("z", means[:, 2])]
    zeros = np.zeros(g, np.float32)
    fields += [("nx", zeros), ("ny", zeros), ("nz", zeros)]
    fields += [(f"f_dc_{c}", harm[:, c, 0]) for c in range(3)]
    if include_rest and harm.shape[2] > 1:
        rest = harm[:, :, 1:].reshape(g, -1)  # channel-major: R's bands, then G's, then B's
        fields += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    fields.append(("opacity", _logit(gs.opacities[keep])))
    log_scales = np.log(np.maximum(gs.scales[keep].astype(np.float64), 1e-30))
    fields += [(f"scale_{i}", log_scales[:, i]) for i in range(3)]
    fields += [(f"rot_{i}", gs.rotations[keep, i]) for i in range(4)]
    fields = [(name, np.ascontiguousarray(arr, dtype=np.float32)) for name, arr in fields]
    return _write_vertex_ply(path, fields, comments=["da3-plugins 3D Gaussians (3DGS layout)"])


def _read_vertex_element(path: Path) -> Dict[str, np.ndarray]:
    """The ``vertex`` element of a binary PLY (scalar properties only) as {name: array}."""
    with open(path, "rb") as fh:
        header: List[str] = []
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: not a PLY file (no end_header)")
            header.append(line.decode("ascii", "replace").strip())
            if header[-1] == "end_header":
                break
        if not header or header[0] != "ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt = next((h.split()[1] for h in header if h.startswith("format ")), "")
        endian = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
        if endian is None:
            raise ValueError(f"{path}: expected a binary PLY, got format {fmt or 'none'!r}")
        elements: List[Tuple[str, int, List[Tuple[str, str]]]] = []
        for h in header:
            parts = h.split()
            if parts[:1] == ["element"]:
                elements.append((parts[1], int(parts[2]), []))
            elif parts[:1] == ["property"]:
                if not elements:
                    raise ValueError(f"{path}: a property before any element")
                if parts[1] == "list":
                    raise ValueError(f"{path}: list property {parts[-1]!r} is not supported")
                if parts[1] not in _PLY_READ_TYPES:
                    raise ValueError(f"{path}: unknown property type {parts[1]!r}")
                elements[-1][2].append((parts[2], endian + _PLY_READ_TYPES[parts[1]]))
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: expected 'vertex' as the first element")
        _, count, props = elements[0]
        dtype = np.dtype(props)
        raw = fh.read(count * dtype.itemsize)
        if len(raw) < count * dtype.itemsize:
            raise ValueError(f"{path}: truncated ({len(raw)} of {count * dtype.itemsize} vertex bytes)")
        data = np.frombuffer(raw, dtype=dtype, count=count)
    return {name: data[name].astype(np.float32) for name in dtype.names}


def read_gaussian_ply(path: PathLike) -> GaussianSet:
    """Read a 3DGS-layout PLY (binary, any scalar types) into a GaussianSet.

    The inverse of :func:`write_gaussian_ply`: opacities go through a sigmoid, scales through
    exp, ``f_rest_*`` are unflattened channel by channel; rotations are returned as stored.
    Extra properties (normals, ``view`` ...) are ignored.

    Raises:
        ValueError: not a binary PLY, or a required property is missing.
    """
    path = Path(path)
    data = _read_vertex_element(path)
    required = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2") + GAUSSIAN_TAIL
    missing = [n for n in required if n not in data]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY, missing properties {', '.join(missing)}")
    count = len(data["x"])
    rest = sorted((n for n in data if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    if [int(n.split("_")[-1]) for n in rest] != list(range(len(rest))) or len(rest) % 3:
        raise ValueError(f"{path}: f_rest_* properties are not 0..3m-1 ({len(rest)} found)")
    k = 1 + len(rest) // 3
    if int(round(k**0.5)) ** 2 != k:
        raise ValueError(f"{path}: {len(rest)} f_rest_* properties are not a whole number of SH bands")
    harm = np.zeros((count, 3, k), np.float32)
    for c in range(3):
        harm[:, c, 0] = data[f"f_dc_{c}"]
    if rest:
        harm[:, :, 1:] = np.stack([data[n] for n in rest], -1).reshape(count, 3, k - 1)
    return GaussianSet(
        means=np.stack([data[a] for a in "xyz"], -1),
        scales=np.exp(np.stack([data[f"scale_{i}"] for i in range(3)], -1).astype(np.float64)),
        rotations=np.stack([data[f"rot_{i}"] for i in range(4)], -1),
        harmonics=harm,
        opacities=_sigmoid(data["opacity"]),
    )
