"""Binary glTF 2.0 (``.glb``): coloured points and camera frusta (numpy only, no trimesh).

The scene stays in the reconstruction's own frame, converted to glTF's axes (Y up, +Z
towards the viewer) by :func:`conventions.points_to_gltf`; ``recenter=True`` also moves the
median point to the origin.
"""

from __future__ import annotations

import colorsys
import json
import os
import struct
from pathlib import Path
from typing import List, Union

import numpy as np

from .. import conventions as conv
from ..reconstruction import Reconstruction, atomic_path

PathLike = Union[str, os.PathLike]

_FLOAT, _UBYTE = 5126, 5121
_POINTS, _LINES = 0, 1


class _Builder:
    """Collects binary buffer views and accessors for one .glb."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: List[dict] = []
        self.accessors: List[dict] = []

    def add(self, arr: np.ndarray, component: int, kind: str, normalized: bool = False, bounds: bool = False) -> int:
        arr = np.ascontiguousarray(arr)
        while len(self.blob) % 4:
            self.blob.append(0)
        offset = len(self.blob)
        self.blob += arr.tobytes()
        self.views.append({"buffer": 0, "byteOffset": offset, "byteLength": arr.nbytes})
        acc = {"bufferView": len(self.views) - 1, "componentType": component, "count": int(arr.shape[0]), "type": kind}
        if normalized:
            acc["normalized"] = True
        if bounds:
            acc["min"] = [float(x) for x in arr.min(0)]
            acc["max"] = [float(x) for x in arr.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1


def _frusta(rec: Reconstruction, size: float):
    """Line segments (8 per view) in world coordinates and one colour per view."""
    h, w = rec.height, rec.width
    corners_px = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    c2w = rec.camera_to_world
    segs, cols = [], []
    n = rec.num_views
    for i in range(n):
        rays = corners_px @ np.linalg.inv(rec.intrinsics[i]).T * size  # z = size plane
        world = rays @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        centre = c2w[i, :3, 3]
        for j in range(4):
            segs += [centre, world[j], world[j], world[(j + 1) % 4]]
        rgb = colorsys.hsv_to_rgb((i + 0.5) / n, 0.85, 0.95)
        cols += [rgb] * 16
    return np.array(segs), (np.array(cols) * 255).round().astype(np.uint8)


def write_glb(path: PathLike, rec: Reconstruction, *, conf_threshold: Union[None, float, str] = "auto",
              stride: int = 1, max_points: int = 1_000_000, cameras: bool = True, recenter: bool = False,
              seed: int = 0) -> Path:
    """Write ``rec`` as a .glb: one POINTS primitive (POSITION, COLOR_0) and, with ``cameras``,
    one LINES primitive with a frustum per view, coloured per view.

    Args:
        conf_threshold: see :meth:`Reconstruction.points` ("auto": the official percentile rule).
        max_points: above this, a seeded random subset is kept.
        recenter: subtract the median point (the official export always does; we keep the
            reconstruction's frame unless asked).
    """
    cloud = rec.points(conf_threshold=conf_threshold, stride=stride)
    if len(cloud) == 0:
        raise ValueError(f"conf_threshold: no point passes the filters (threshold {conf_threshold!r}); lower it")
    pos, col = cloud.positions.astype(np.float64), cloud.colors
    if len(pos) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(pos), max_points, replace=False))
        pos, col = pos[pick], col[pick]
    offset = np.median(pos, axis=0) if recenter else np.zeros(3)
    b = _Builder()
    meshes, nodes = [], []
    p_acc = b.add(conv.points_to_gltf(pos - offset).astype(np.float32), _FLOAT, "VEC3", bounds=True)
    rgba = np.concatenate([col, np.full((len(col), 1), 255, np.uint8)], 1)
    c_acc = b.add(rgba, _UBYTE, "VEC4", normalized=True)
    meshes.append({"name": "points", "primitives": [{"attributes": {"POSITION": p_acc, "COLOR_0": c_acc}, "mode": _POINTS}]})
    nodes.append({"name": "points", "mesh": 0})
    if cameras:
        lo, hi = np.percentile(pos, 5, axis=0), np.percentile(pos, 95, axis=0)
        size = 0.03 * float(np.linalg.norm(hi - lo)) or 0.03
        segs, seg_cols = _frusta(rec, size)
        l_acc = b.add(conv.points_to_gltf(segs - offset).astype(np.float32), _FLOAT, "VEC3", bounds=True)
        lc_acc = b.add(np.concatenate([seg_cols, np.full((len(seg_cols), 1), 255, np.uint8)], 1), _UBYTE, "VEC4",
                       normalized=True)
        meshes.append({"name": "cameras", "primitives": [{"attributes": {"POSITION": l_acc, "COLOR_0": lc_acc}, "mode": _LINES}]})
        nodes.append({"name": "cameras", "mesh": 1})
    while len(b.blob) % 4:
        b.blob.append(0)
    doc = {
        "asset": {"version": "2.0", "generator": "da3-plugins"},
        "scene": 0,
        "scenes": [{"name": "da3", "nodes": list(range(len(nodes)))}],
        "nodes": nodes,
        "meshes": meshes,
        "accessors": b.accessors,
        "bufferViews": b.views,
        "buffers": [{"byteLength": len(b.blob)}],
        "extras": {"recentered_by": [float(x) for x in offset], "model": rec.model},
    }
    js = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(b.blob)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<4sII", b"glTF", 2, total))
            fh.write(struct.pack("<I4s", len(js), b"JSON") + js)
            fh.write(struct.pack("<I4s", len(b.blob), b"BIN\x00") + bytes(b.blob))
    return path
