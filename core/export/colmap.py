"""COLMAP sparse models (binary or text), numpy only.

* ``cameras``: one PINHOLE camera (fx, fy, cx, cy) per view at the **original** photo size,
  from :attr:`Reconstruction.intrinsics_original`.  COLMAP's pixel centres are at +0.5 like
  ours (continuous coordinates), so K is written unchanged; a skew term, if any, is dropped.
* ``images``: image i+1 uses camera i+1 and the world-to-camera pose as (qvec w x y z, tvec);
  its name is the original photo's file name when the reconstruction knows it
  (``options["image_files"]``), else ``<image name>.png``.
* ``points3D``: back-projected pixels (every ``stride``-th, passing the confidence filter, not
  sky), coloured by the processed image, with error 0 (each point lies on its pixel's ray by
  construction) and a one-element track (image, point2D index); the image's point2D is the
  pixel centre mapped to **original** image coordinates by the inverse ``pixel_transform``.

The reconstruction is never modified.  The folder is written under a temporary name beside
it and renamed.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO, List, NamedTuple, Union

import numpy as np

from .. import conventions as conv
from ..errors import OptionError
from ..points import depth_to_points, resolve_conf_threshold
from ..quaternions import matrix_to_quat_wxyz
from ..reconstruction import Reconstruction, atomic_folder

PathLike = Union[str, os.PathLike]
PINHOLE = 1  # COLMAP's model id


class _Model(NamedTuple):
    """Everything a COLMAP model file needs, derived from the reconstruction."""

    k_orig: np.ndarray  # (N, 3, 3) K at the original sizes
    names: List[str]  # N image names
    qvec: np.ndarray  # (N, 4) w x y z
    tvec: np.ndarray  # (N, 3)
    view: np.ndarray  # (P,) source view of each point
    xyz: np.ndarray  # (P, 3) float64 world points
    rgb: np.ndarray  # (P, 3) uint8
    uv: np.ndarray  # (P, 2) float64 pixel position in the original image
    point_ids: np.ndarray  # (P,) int64, 1-based
    idx_in_image: np.ndarray  # (P,) index of each point in its image's points2D list
    per_image: List[np.ndarray]  # for each view, the point indices in points2D order


def image_file_names(rec: Reconstruction) -> List[str]:
    """COLMAP image names: the original file names when known and unique, else ``<name>.png``."""
    files = rec.options.get("image_files")
    if (isinstance(files, list) and len(files) == rec.num_views and all(files)
            and len(set(map(str, files))) == len(files)):
        return [str(f) for f in files]
    return [f"{name}.png" for name in rec.image_names]


def _build(rec: Reconstruction, conf_threshold, stride: int, max_points: int, seed: int) -> _Model:
    thr = resolve_conf_threshold(conf_threshold, rec.conf)

    def mask(i: int) -> np.ndarray:  # view by view (two passes): memory holds the picked points only
        return rec.valid_mask(thr, views=slice(i, i + 1))[0, ::stride, ::stride]

    counts = np.array([int(mask(i).sum()) for i in range(rec.num_views)], np.int64)
    total = int(counts.sum())
    if total == 0:
        raise OptionError(f"conf_threshold: no point passes the filters (threshold {conf_threshold!r}); lower it")
    pick = np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False)) if total > max_points else None
    starts = np.concatenate([[0], np.cumsum(counts)])
    taken = counts if pick is None else np.diff(np.searchsorted(pick, starts))
    n = int(taken.sum())  # filled view by view into arrays of the final size: no lists to concatenate
    v = np.repeat(np.arange(rec.num_views, dtype=np.int64), taken)
    row, col, xyz = np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 3))
    at = 0
    for i in range(rec.num_views):
        if not taken[i]:
            continue
        r, c = np.nonzero(mask(i))  # indices into the strided grid
        if pick is not None:
            lo, hi = np.searchsorted(pick, starts[i:i + 2])
            r, c = r[pick[lo:hi] - starts[i]], c[pick[lo:hi] - starts[i]]
        # the pixel centres back-projected, in float64: every point reprojects onto its pixel to 1e-6 px
        xyz[at:at + len(r)] = depth_to_points(rec.depth[i], rec.intrinsics[i], rec.extrinsics[i], stride=stride,
                                              dtype=np.float64)[r, c]
        row[at:at + len(r)], col[at:at + len(r)] = r * stride, c * stride
        at += len(r)
    finite = np.isfinite(xyz).all(1)
    if not finite.all():
        v, xyz, row, col = v[finite], xyz[finite], row[finite], col[finite]
    if len(v) == 0:
        raise ValueError("depth: no finite point to write")
    u_grid, v_grid = conv.pixel_centres(rec.height, rec.width)
    inv_pt = np.linalg.inv(rec.pixel_transform)
    uv = np.empty((len(v), 2))
    for s in range(0, len(v), 1 << 16):  # in chunks: not a (P, 3, 3) copy of the transforms
        part = slice(s, s + (1 << 16))
        r, c = row[part], col[part]
        pix = np.stack([u_grid[r, c], v_grid[r, c], np.ones(len(r))], -1)  # continuous coordinates
        uv[part] = np.einsum("pij,pj->pi", inv_pt[v[part]], pix)[:, :2]
    order = np.argsort(v, kind="stable")
    bounds = np.searchsorted(v[order], np.arange(rec.num_views + 1))
    idx_in_image = np.empty(len(v), np.int64)
    per_image = []
    for i in range(rec.num_views):
        sel = order[bounds[i]:bounds[i + 1]]
        idx_in_image[sel] = np.arange(len(sel))
        per_image.append(sel)
    return _Model(
        k_orig=rec.intrinsics_original, names=image_file_names(rec),
        qvec=matrix_to_quat_wxyz(rec.extrinsics[:, :3, :3]), tvec=rec.extrinsics[:, :3, 3].copy(),
        view=v, xyz=xyz, rgb=rec.images[v, row, col], uv=uv, point_ids=np.arange(1, len(v) + 1, dtype=np.int64),
        idx_in_image=idx_in_image, per_image=per_image)


def write_colmap(folder: PathLike, rec: Reconstruction, *, binary: bool = True,
                 conf_threshold: Union[None, float, str] = "auto", stride: int = 2,
                 max_points: int = 500_000, overwrite: bool = False, seed: int = 0) -> Path:
    """Write ``cameras``, ``images`` and ``points3D`` (``.bin`` or ``.txt``) into ``folder``.

    The folder is written whole under a temporary name and renamed (an interrupted export
    leaves nothing).  Read it with ``pycolmap.Reconstruction(folder)`` or ``colmap gui``
    (image path: the folder of the original photos).

    Args:
        folder: the model folder (e.g. ``.../sparse/0``).
        rec: the reconstruction (not modified).
        binary: ``.bin`` files (default) or ``.txt``.
        conf_threshold: keep pixels with conf >= this; None keeps all, "auto" the official
            percentile rule.
        stride: every ``stride``-th pixel in both directions (2: a quarter of the pixels).
        max_points: above this, a seeded random subset of the points is kept.
        overwrite: replace an existing ``folder``; otherwise an existing one is an error.
        seed: the subsampling seed.

    Returns:
        ``folder``.

    Raises:
        ValueError: no point passes the filters, or bad arguments.
        FileExistsError: ``folder`` exists and ``overwrite`` is False.
    """
    folder = Path(folder)
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride: expected an integer >= 1, got {stride!r}")
    if int(max_points) != max_points or max_points < 1:
        raise ValueError(f"max_points: expected an integer >= 1, got {max_points!r}")
    for name in image_file_names(rec):
        if not binary and any(ch.isspace() for ch in name):
            raise ValueError(f"image_names: {name!r} has white space, which COLMAP's text format cannot hold; "
                             "use binary=True")
    model = _build(rec, conf_threshold, int(stride), int(max_points), seed)
    with atomic_folder(folder, overwrite) as tmp:
        if binary:
            with open(tmp / "cameras.bin", "wb") as fh:
                _cameras_bin(fh, rec, model)
            with open(tmp / "images.bin", "wb") as fh:
                _images_bin(fh, model)
            with open(tmp / "points3D.bin", "wb") as fh:
                _points_bin(fh, model)
        else:
            with open(tmp / "cameras.txt", "w", encoding="utf-8") as fh:
                _cameras_txt(fh, rec, model)
            with open(tmp / "images.txt", "w", encoding="utf-8") as fh:
                _images_txt(fh, model)
            with open(tmp / "points3D.txt", "w", encoding="utf-8") as fh:
                _points_txt(fh, model)
    return folder


def _camera_rows(rec: Reconstruction, model: _Model):
    for i in range(rec.num_views):
        h, w = (int(x) for x in rec.original_sizes[i])
        k = model.k_orig[i]
        yield i + 1, w, h, (float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))


def _cameras_bin(fh: BinaryIO, rec: Reconstruction, model: _Model) -> None:
    fh.write(struct.pack("<Q", rec.num_views))
    for cam_id, w, h, params in _camera_rows(rec, model):
        fh.write(struct.pack("<iiQQ4d", cam_id, PINHOLE, w, h, *params))


def _images_bin(fh: BinaryIO, model: _Model) -> None:
    fh.write(struct.pack("<Q", len(model.names)))
    for i, name in enumerate(model.names):
        fh.write(struct.pack("<i4d3di", i + 1, *model.qvec[i], *model.tvec[i], i + 1))
        fh.write(name.encode("utf-8") + b"\x00")
        sel = model.per_image[i]
        fh.write(struct.pack("<Q", len(sel)))
        rows = np.zeros(len(sel), dtype=[("x", "<f8"), ("y", "<f8"), ("id", "<i8")])
        rows["x"], rows["y"], rows["id"] = model.uv[sel, 0], model.uv[sel, 1], model.point_ids[sel]
        fh.write(rows.view(np.uint8))  # no bytes copy


def _points_bin(fh: BinaryIO, model: _Model) -> None:
    n = len(model.point_ids)
    fh.write(struct.pack("<Q", n))
    rows = np.zeros(n, dtype=[("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"),
                              ("len", "<u8"), ("img", "<i4"), ("p2d", "<i4")])
    rows["id"], rows["xyz"], rows["rgb"] = model.point_ids, model.xyz, model.rgb
    rows["err"], rows["len"] = 0.0, 1
    rows["img"], rows["p2d"] = model.view + 1, model.idx_in_image
    fh.write(rows.view(np.uint8))  # no bytes copy


def _cameras_txt(fh, rec: Reconstruction, model: _Model) -> None:
    fh.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
    fh.write(f"# Number of cameras: {rec.num_views}\n")
    for cam_id, w, h, params in _camera_rows(rec, model):
        fh.write(f"{cam_id} PINHOLE {w} {h} " + " ".join(f"{p:.17g}" for p in params) + "\n")


def _images_txt(fh, model: _Model) -> None:
    fh.write("# Image list with two lines of data per image:\n"
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
    fh.write(f"# Number of images: {len(model.names)}\n")
    for i, name in enumerate(model.names):
        nums = " ".join(f"{float(x):.17g}" for x in (*model.qvec[i], *model.tvec[i]))
        fh.write(f"{i + 1} {nums} {i + 1} {name}\n")
        sel = model.per_image[i]
        fh.write(" ".join(f"{model.uv[j, 0]:.17g} {model.uv[j, 1]:.17g} {model.point_ids[j]}" for j in sel) + "\n")


def _points_txt(fh, model: _Model) -> None:
    fh.write("# 3D point list with one line of data per point:\n"
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
    fh.write(f"# Number of points: {len(model.point_ids)}\n")
    for j in range(len(model.point_ids)):
        x, y, z = model.xyz[j]
        r, g, b = model.rgb[j]
        fh.write(f"{model.point_ids[j]} {x:.17g} {y:.17g} {z:.17g} {r} {g} {b} 0 "
                 f"{model.view[j] + 1} {model.idx_in_image[j]}\n")
