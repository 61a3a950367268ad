"""COLMAP sparse models (binary or text), numpy only.

One PINHOLE camera per view at the **original** photo size (``Reconstruction.intrinsics_original``;
COLMAP's pixel centres are at +0.5 like ours, so K is written unchanged), images with the
world-to-camera pose as (qvec w x y z, tvec), and points3D from the depth maps, each with a
one-element track pointing at the pixel it came from (in original image coordinates).
The reconstruction is never modified. The folder is written under a temporary name and renamed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import List, Union

import numpy as np

from .. import conventions as conv
from ..reconstruction import Reconstruction, atomic_folder

PathLike = Union[str, os.PathLike]
PINHOLE = 1


def rotation_to_qvec(r: np.ndarray) -> np.ndarray:
    """3x3 rotation -> COLMAP's qvec (w, x, y, z), w >= 0."""
    return conv.rotation_to_quaternion(r)


def _file_names(rec: Reconstruction) -> List[str]:
    files = rec.options.get("image_files")
    if isinstance(files, list) and len(files) == rec.num_views and all(files):
        return [str(f) for f in files]
    return [f"{name}.png" for name in rec.image_names]


def _points(rec: Reconstruction, conf_threshold, stride: int, max_points: int, seed: int):
    if isinstance(conf_threshold, str):
        conf_threshold = rec.default_conf_threshold() if conf_threshold == "auto" else float(conf_threshold)
    mask = rec.valid_mask(conf_threshold)
    sub = np.zeros_like(mask)
    sub[:, ::stride, ::stride] = True
    mask &= sub
    v, row, col = np.nonzero(mask)
    if len(v) == 0:
        raise ValueError(f"conf_threshold: no point passes the filters (threshold {conf_threshold!r}); lower it")
    if len(v) > max_points:
        pick = np.sort(np.random.default_rng(seed).choice(len(v), max_points, replace=False))
        v, row, col = v[pick], row[pick], col[pick]
    xyz = rec.world_points()[v, row, col].astype(np.float64)
    rgb = rec.images[v, row, col]
    # pixel centres, processed -> original coordinates
    uv1 = np.stack([col + 0.5, row + 0.5, np.ones_like(col, dtype=np.float64)], -1)
    inv = np.linalg.inv(rec.pixel_transform)
    uv_orig = np.einsum("nij,nj->ni", inv[v], uv1)[:, :2]
    return v, xyz, rgb, uv_orig


def write_colmap(folder: PathLike, rec: Reconstruction, *, binary: bool = True,
                 conf_threshold: Union[None, float, str] = "auto", stride: int = 2,
                 max_points: int = 500_000, overwrite: bool = True, seed: int = 0) -> Path:
    """Write ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``) into ``folder``.

    Args:
        stride: use every ``stride``-th pixel of each depth map (2 by default: a quarter).
        max_points: above this, a seeded random subset of the points is kept.
        overwrite: replace an existing folder; otherwise an existing folder is an error.
    """
    folder = Path(folder)
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    views, xyz, rgb, uv = _points(rec, conf_threshold, int(stride), max_points, seed)
    k_orig = rec.intrinsics_original
    names = _file_names(rec)
    point_ids = np.arange(1, len(views) + 1, dtype=np.int64)
    # per image: its points2D in order, and each point's index within its image
    order = np.argsort(views, kind="stable")
    idx_in_image = np.empty(len(views), np.int64)
    per_image = []
    for i in range(rec.num_views):
        sel = order[views[order] == i]
        idx_in_image[sel] = np.arange(len(sel))
        per_image.append(sel)

    with atomic_folder(folder, overwrite) as tmp:
        write = _write_binary if binary else _write_text
        write(tmp, rec, k_orig, names, per_image, uv, point_ids, views, xyz, rgb, idx_in_image)
    return folder


def _camera_rows(rec, k_orig):
    for i in range(rec.num_views):
        h, w = (int(x) for x in rec.original_sizes[i])
        k = k_orig[i]
        yield i + 1, w, h, (k[0, 0], k[1, 1], k[0, 2], k[1, 2])


def _write_binary(tmp, rec, k_orig, names, per_image, uv, point_ids, views, xyz, rgb, idx_in_image):
    with open(tmp / "cameras.bin", "wb") as fh:
        fh.write(struct.pack("<Q", rec.num_views))
        for cam_id, w, h, params in _camera_rows(rec, k_orig):
            fh.write(struct.pack("<iiQQ4d", cam_id, PINHOLE, w, h, *params))
    with open(tmp / "images.bin", "wb") as fh:
        fh.write(struct.pack("<Q", rec.num_views))
        for i in range(rec.num_views):
            q = rotation_to_qvec(rec.extrinsics[i, :3, :3])
            t = rec.extrinsics[i, :3, 3]
            fh.write(struct.pack("<i4d3di", i + 1, *q, *t, i + 1))
            fh.write(names[i].encode("utf-8") + b"\x00")
            sel = per_image[i]
            fh.write(struct.pack("<Q", len(sel)))
            rows = np.zeros(len(sel), dtype=[("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
            rows["x"], rows["y"], rows["id"] = uv[sel, 0], uv[sel, 1], point_ids[sel]
            fh.write(rows.tobytes())
    with open(tmp / "points3D.bin", "wb") as fh:
        fh.write(struct.pack("<Q", len(point_ids)))
        rows = np.zeros(len(point_ids), dtype=[("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"),
                                               ("len", "<u8"), ("img", "<i4"), ("p2d", "<i4")])
        rows["id"], rows["xyz"], rows["rgb"] = point_ids, xyz, rgb
        rows["err"], rows["len"] = 0.0, 1
        rows["img"], rows["p2d"] = views + 1, idx_in_image
        fh.write(rows.tobytes())


def _write_text(tmp, rec, k_orig, names, per_image, uv, point_ids, views, xyz, rgb, idx_in_image):
    with open(tmp / "cameras.txt", "w") as fh:
        fh.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        fh.write(f"# Number of cameras: {rec.num_views}\n")
        for cam_id, w, h, params in _camera_rows(rec, k_orig):
            fh.write(f"{cam_id} PINHOLE {w} {h} " + " ".join(f"{float(p):.17g}" for p in params) + "\n")
    with open(tmp / "images.txt", "w") as fh:
        fh.write("# Image list with two lines of data per image:\n"
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
        for i in range(rec.num_views):
            q = rotation_to_qvec(rec.extrinsics[i, :3, :3])
            t = rec.extrinsics[i, :3, 3]
            fh.write(f"{i + 1} " + " ".join(f"{float(x):.17g}" for x in (*q, *t)) + f" {i + 1} {names[i]}\n")
            sel = per_image[i]
            fh.write(" ".join(f"{uv[j, 0]:.17g} {uv[j, 1]:.17g} {point_ids[j]}" for j in sel) + "\n")
    with open(tmp / "points3D.txt", "w") as fh:
        fh.write("# 3D point list with one line of data per point:\n"
                 "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        for j in range(len(point_ids)):
            x, y, z = xyz[j]
            r, g, b = rgb[j]
            fh.write(f"{point_ids[j]} {x:.17g} {y:.17g} {z:.17g} {r} {g} {b} 0.0 {views[j] + 1} {idx_in_image[j]}\n")
