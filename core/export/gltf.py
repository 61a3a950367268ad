"""Binary glTF 2.0 (``.glb``): coloured points and camera frusta, hand-written (numpy only).

The scene stays in the reconstruction's own frame, converted to glTF's axes (Y up, +Z towards
the viewer) by :func:`conventions.points_to_gltf`; ``recenter=True`` also moves the median
point to the origin.  The 4x4 map from the reconstruction's world to the file's coordinates
is stored in the top-level ``extras.world_to_gltf`` (row-major), so tools can map back.

Layout: mesh 0 is one ``POINTS`` primitive (``POSITION`` float VEC3 with min/max, ``COLOR_0``
normalised unsigned-byte VEC4); with ``cameras``, mesh 1 is one ``LINES`` primitive with 8
segments per view (4 from the camera centre to the image corners, 4 along the image border),
one colour per view.  Both use an unlit material (``KHR_materials_unlit``) so viewers show the
photo colours as they are.
"""

from __future__ import annotations

import colorsys
import json
import os
import struct
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple, Union

import numpy as np

from .. import conventions as conv
from ..errors import OptionError
from ..reconstruction import Reconstruction, atomic_path

PathLike = Union[str, os.PathLike]

_FLOAT, _UBYTE = 5126, 5121
_POINTS, _LINES = 0, 1
_ARRAY_BUFFER = 34962


class _Builder:
    """The buffer views and accessors of one .glb, and the binary chunk as a list of parts
    written in order (arrays are not copied into one buffer: memory stays that of the inputs)."""

    def __init__(self) -> None:
        self.length = 0
        self.parts: List[Tuple[int, Callable[[], Iterable[np.ndarray]]]] = []  # (zero padding, chunks)
        self.views: List[Dict[str, Any]] = []
        self.accessors: List[Dict[str, Any]] = []

    def add(self, arr: np.ndarray, component: int, kind: str, normalized: bool = False, bounds: bool = False) -> int:
        """Append a (count, k) array as one vertex-attribute accessor; returns its index."""
        arr = np.ascontiguousarray(arr)
        return self.add_chunks(lambda: [arr], len(arr), arr.nbytes, component, kind, normalized,
                               (arr.min(0), arr.max(0)) if bounds else None)

    def add_chunks(self, chunks: Callable[[], Iterable[np.ndarray]], count: int, nbytes: int, component: int,
                   kind: str, normalized: bool = False, bounds=None) -> int:
        """Append an accessor of ``count`` rows whose bytes ``chunks()`` yields (C-contiguous
        arrays, ``nbytes`` in all), with optional (min, max) ``bounds``; returns its index."""
        pad = -self.length % 4  # each view starts on a multiple of 4 bytes
        self.length += pad
        self.parts.append((pad, chunks))
        self.views.append({"buffer": 0, "byteOffset": self.length, "byteLength": nbytes, "target": _ARRAY_BUFFER})
        self.length += nbytes
        acc: Dict[str, Any] = {"bufferView": len(self.views) - 1, "componentType": component,
                               "count": int(count), "type": kind}
        if normalized:
            acc["normalized"] = True
        if bounds is not None:
            acc["min"] = [float(x) for x in bounds[0]]
            acc["max"] = [float(x) for x in bounds[1]]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    @property
    def padded_length(self) -> int:
        return self.length + (-self.length % 4)

    def write(self, fh) -> None:
        """The binary chunk's content: every part, zero-padded to a multiple of 4 bytes."""
        written = 0
        for pad, chunks in self.parts:
            fh.write(b"\x00" * pad)
            written += pad
            for c in chunks():
                c = np.ascontiguousarray(c)
                fh.write(c.reshape(-1).view(np.uint8))
                written += c.nbytes
        fh.write(b"\x00" * (self.padded_length - written))


def view_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 per-view colours: HSV with h = (i + 0.5) / n, s = 0.85, v = 0.95 (as the official)."""
    rgb = [colorsys.hsv_to_rgb((i + 0.5) / n, 0.85, 0.95) for i in range(n)]
    return (np.array(rgb) * 255).round().astype(np.uint8).reshape(n, 3)


def frustum_segments(rec: Reconstruction, size: float) -> np.ndarray:
    """(N*16, 3) float64 world-space endpoints of 8 segments per view.

    The image rectangle is the full extent of the processed image in continuous pixel
    coordinates, (0, 0) to (W, H), back-projected to the plane z = ``size`` in front of the
    camera; the segments are centre-to-corner (4) then the rectangle's edges (4).
    """
    h, w = rec.height, rec.width
    corners_px = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    c2w = rec.camera_to_world
    segs = []
    for i in range(rec.num_views):
        rays = corners_px @ np.linalg.inv(rec.intrinsics[i]).T * size  # camera frame, z = size
        world = rays @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        centre = c2w[i, :3, 3]
        for j in range(4):
            segs += [centre, world[j]]
        for j in range(4):
            segs += [world[j], world[(j + 1) % 4]]
    return np.array(segs, dtype=np.float64).reshape(-1, 3)


def _points(rec: Reconstruction, conf_threshold, stride: int, max_points: int,
            seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(P, 3) float32 world points and (P, 3) uint8 colours, filtered, finite, subsampled."""
    # view by view; the sample's confidence and view index are not needed here
    cloud, total = rec._sample_points(max_points, conf_threshold, stride, seed, True, attributes=False)
    if total == 0:
        raise OptionError(f"conf_threshold: no point passes the filters (threshold {conf_threshold!r}); lower it")
    return cloud.positions, cloud.colors


_CHUNK = 1 << 16
"""Points converted and written at a time."""


def _column_stats(pos: np.ndarray, fn) -> np.ndarray:
    """``fn`` of each column of (P, 3) float32 points in float64 (one column copy at a time)."""
    return np.array([fn(pos[:, k].astype(np.float64)) for k in range(pos.shape[1])])


def write_glb(path: PathLike, rec: Reconstruction, *, conf_threshold: Union[None, float, str] = "auto",
              stride: int = 1, max_points: int = 1_000_000, cameras: bool = True, recenter: bool = False,
              seed: int = 0) -> Path:
    """Write ``rec`` as a binary glTF 2.0 file (atomically); returns ``path``.

    Args:
        path: the ``.glb`` file.
        rec: the reconstruction (not modified).
        conf_threshold: see :meth:`Reconstruction.points`; "auto" is the official rule
            min(max(1.05, P40(conf)), P90(conf)).  Sky pixels are left out.
        stride: every ``stride``-th pixel in both directions.
        max_points: above this many points, a random subset of this size is kept
            (``numpy.random.default_rng(seed)``, so the same input gives the same file).
        cameras: add a frustum per view, sized 0.03 * ||P95 - P5|| of the points (as the
            official export).
        recenter: subtract the median point (the official export always does; by default
            the reconstruction's frame is kept, so files of one scene line up).
        seed: the subsampling seed.

    Raises:
        ValueError: no point passes the filters, or bad arguments.
    """
    if int(max_points) != max_points or max_points < 1:
        raise ValueError(f"max_points: expected an integer >= 1, got {max_points!r}")
    pos, col = _points(rec, conf_threshold, stride, int(max_points), seed)  # float32: the sample, held once
    offset = _column_stats(pos, lambda c: np.median(c, overwrite_input=True)) if recenter else np.zeros(3)
    # world -> file: x_file = F (x - offset) with F the glTF axis change
    world_to_gltf = conv.CV_WORLD_TO_GLTF_WORLD.copy()
    world_to_gltf[:3, 3] = -conv.points_to_gltf(offset)

    def file_points():  # the points in file coordinates (as float64, then float32), a chunk at a time
        for start in range(0, len(pos), _CHUNK):
            yield conv.points_to_gltf(pos[start:start + _CHUNK].astype(np.float64) - offset).astype(np.float32)

    def colours():
        for start in range(0, len(col), _CHUNK):
            c = col[start:start + _CHUNK]
            yield np.concatenate([c, np.full((len(c), 1), 255, np.uint8)], 1)

    lows, highs = zip(*((c.min(0), c.max(0)) for c in file_points()))
    b = _Builder()
    material = {"name": "vertex colours", "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1],
                                                                   "metallicFactor": 0.0, "roughnessFactor": 1.0},
                "extensions": {"KHR_materials_unlit": {}}}
    p_acc = b.add_chunks(file_points, len(pos), len(pos) * 12, _FLOAT, "VEC3",
                         bounds=(np.min(lows, 0), np.max(highs, 0)))
    c_acc = b.add_chunks(colours, len(col), len(col) * 4, _UBYTE, "VEC4", normalized=True)
    meshes: List[Dict[str, Any]] = [{"name": "points", "primitives": [
        {"attributes": {"POSITION": p_acc, "COLOR_0": c_acc}, "mode": _POINTS, "material": 0}]}]
    nodes: List[Dict[str, Any]] = [{"name": "points", "mesh": 0}]
    if cameras:
        lo, hi = _column_stats(pos, lambda c: np.percentile(c, [5, 95], overwrite_input=True)).T
        size = 0.03 * float(np.linalg.norm(hi - lo)) or 0.03
        segs = frustum_segments(rec, size)
        seg_cols = np.repeat(view_colours(rec.num_views), 16, axis=0)
        l_acc = b.add(conv.points_to_gltf(segs - offset).astype(np.float32), _FLOAT, "VEC3", bounds=True)
        lc_acc = b.add(np.concatenate([seg_cols, np.full((len(seg_cols), 1), 255, np.uint8)], 1), _UBYTE, "VEC4",
                       normalized=True)
        meshes.append({"name": "cameras", "primitives": [
            {"attributes": {"POSITION": l_acc, "COLOR_0": lc_acc}, "mode": _LINES, "material": 0}]})
        nodes.append({"name": "cameras", "mesh": 1})
    doc = {
        "asset": {"version": "2.0", "generator": "da3-plugins"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"name": "da3", "nodes": list(range(len(nodes)))}],
        "nodes": nodes,
        "meshes": meshes,
        "materials": [material],
        "accessors": b.accessors,
        "bufferViews": b.views,
        "buffers": [{"byteLength": b.padded_length}],
        "extras": {"world_to_gltf": world_to_gltf.tolist(), "recentered_by": [float(x) for x in offset],
                   "model": rec.model, "is_metric": rec.is_metric, "image_names": list(rec.image_names)},
    }
    js = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + b.padded_length
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<4sII", b"glTF", 2, total))
            fh.write(struct.pack("<I4s", len(js), b"JSON"))
            fh.write(js)
            fh.write(struct.pack("<I4s", b.padded_length, b"BIN\x00"))
            b.write(fh)
    return path
