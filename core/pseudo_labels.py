"""Teacher pseudo-labels at dataset scale: a scene folder's inputs, and a reconstruction's
depth aligned to the scene's own (sparse or noisy) metric depth.

``da3p batch ROOT --export depth -o OUT`` reconstructs every scene folder below ``ROOT``; the
``depth`` export of each (``core/export/depth_images.py``) is a training-data scene folder, so
``da3p train --data OUT`` trains on the teacher's labels.  When a scene folder carries depth
(``depth`` files in ``cameras.json``, a COLMAP ``depth/`` folder, or COLMAP's sparse points),
the teacher's depth is first brought to it, view by view::

    inputs = scene_inputs("ROOT/office")             # image files, cameras, measured depth
    rec = model.reconstruct(list(inputs.images))     # (or with the cameras as known poses)
    if inputs.measured is not None:
        rec, stats = align_to_measured(rec, inputs.measured)
    write_depth_images("OUT/office/depth", rec)

The alignment is :func:`core.training.data.pseudo_label_depth` (per-view RANSAC scale and
shift, the same as ``da3p train --teacher``) on the reconstruction's processed pixel grid:
each processed pixel takes the measured depth of the original pixel that contains its centre
(the inverse of ``rec.pixel_transform``: the resize and crop of ``core/preprocess.py``), or,
when that one is unknown, of the known original pixel whose centre falls in it nearest to its
centre (so sparse depth survives a downscale).  Depth is never blended.

numpy and torch only (through ``pseudo_label_depth``); no host tool.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as conv
from . import datasets as D
from .errors import DatasetError, UserInputError
from .reconstruction import Reconstruction

PathLike = Union[str, os.PathLike]
Measured = Union[np.ndarray, Sequence[np.ndarray]]

_ABS_REL_SAMPLES = 20000  # measured pixels per view in the stats' median (evenly spaced), at most


@dataclass(frozen=True)
class SceneInputs:
    """What a training-data scene folder gives a reconstruction.

    Attributes:
        images: absolute paths of the image files, in frame order (``cameras.json``'s
            ``frames``; image name order for COLMAP).
        extrinsics: (N, 4, 4) float64 OpenCV world-to-camera, or None.
        intrinsics: (N, 3, 3) float64 K in pixels of the image files (a COLMAP camera of
            another size is scaled to the file), or None.
        measured: (N, H, W) float32 metric depth at the image files' size, 0 = unknown (a
            view without depth is all 0; ``conf < min_conf`` pixels are 0, as the loader
            makes them); None when the scene has no depth at all.  COLMAP scenes without
            ``depth/`` give their sparse points' depth.  When the image files differ in size,
            a tuple of N (H_i, W_i) arrays instead.
    """

    images: Tuple[str, ...]
    extrinsics: Optional[np.ndarray] = None
    intrinsics: Optional[np.ndarray] = None
    measured: Optional[Union[np.ndarray, Tuple[np.ndarray, ...]]] = None

    @property
    def num_views(self) -> int:
        return len(self.images)


def scene_inputs(folder: PathLike) -> SceneInputs:
    """The image files, cameras and measured depth of a training-data scene folder (the
    simple format or a COLMAP project, ``docs/training-data.md``), read as
    :func:`core.datasets.load_scene_folder` reads them but at each image file's own size;
    the images are not decoded (their size comes from the header).

    Raises:
        DatasetError: (a ``ValueError``) one line naming the file at fault, as the loader's;
            also for an image with an EXIF orientation tag other than 1 (the reconstruction
            turns such photos upright while the scene's K, pose and depth are for the stored
            pixels).
    """
    path = Path(folder)
    views, cfg, min_conf = D._scene_views(path, None)
    png_unit = D._png_unit_reader(path, cfg)
    images: List[str] = []
    ks, w2cs = [], []
    depths: List[Optional[np.ndarray]] = []
    sizes = []
    for view in views:
        h, w = _image_size(view.image)
        k, xys = D._fit_camera(view, h, w)
        if view.depth is not None:
            d = D._view_depth(view, h, w, png_unit, min_conf)
        elif view.sparse is not None:
            d = D._splat_depth(xys, view.sparse[1], h, w)
        else:
            d = None
        images.append(os.path.abspath(view.image))
        ks.append(k)
        w2cs.append(conv.as_4x4(np.asarray(view.w2c, np.float64)[:3]))
        depths.append(d)
        sizes.append((h, w))
    measured = None
    if any(d is not None for d in depths):
        filled = [np.zeros(s, np.float32) if d is None else np.asarray(d, np.float32) for d, s in zip(depths, sizes)]
        measured = np.stack(filled) if len(set(sizes)) == 1 else tuple(filled)
    return SceneInputs(images=tuple(images), extrinsics=np.stack(w2cs).astype(np.float64),
                       intrinsics=np.stack(ks).astype(np.float64), measured=measured)


def _image_size(f: Path) -> Tuple[int, int]:
    """(h, w) of an image file from its header, with the loader's checks; an EXIF rotation is an error."""
    from .image_stream import _orientation  # the pipeline's own reading of the tag

    if not f.is_file():
        raise DatasetError(f"{f}: image missing")
    if f.suffix.lower() not in D.IMAGE_SUFFIXES:
        raise DatasetError(f"{f}: not a PNG or JPEG file")
    try:
        with Image.open(f) as im:
            w, h = im.size
            orientation = _orientation(im, f)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{f}: cannot be read as an image ({D._first_line(e)})") from None
    if orientation != 1:
        raise DatasetError(f"{f}: EXIF orientation {orientation}: a reconstruction turns it upright, but the "
                           "scene's K, pose and depth are for the stored pixels; save it without the tag")
    return h, w


# ------------------------------------------------------------------------------ alignment


def measured_to_processed(measured: np.ndarray, transform: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """One view's measured depth (H0, W0) at the original size -> (h, w) float32 on the
    processed grid of ``transform`` (``Reconstruction.pixel_transform[i]``, original ->
    processed continuous pixel coordinates), 0 = unknown.

    A processed pixel takes the original pixel containing its centre; when that one is unknown
    (0 or not finite), the known original pixel whose centre maps into it closest to its centre
    (so sparse depth survives a downscale).  Never blended."""
    m = np.asarray(measured)
    if m.ndim != 2:
        raise UserInputError(f"measured: expected an (H, W) depth map, got shape {m.shape}")
    h0, w0 = m.shape
    h, w = int(size_hw[0]), int(size_hw[1])
    t = np.asarray(transform, np.float64)
    known = np.isfinite(m) & (m > 0)
    values = np.where(known, m, 0).astype(np.float32)
    out = np.zeros((h, w), np.float32)
    # the original pixel containing each processed pixel's centre
    u, v = conv.pixel_centres(h, w)
    inv = np.linalg.inv(t)
    col = np.floor(inv[0, 0] * u + inv[0, 1] * v + inv[0, 2])
    row = np.floor(inv[1, 0] * u + inv[1, 1] * v + inv[1, 2])
    inside = (col >= 0) & (col < w0) & (row >= 0) & (row < h0)
    out[inside] = values[row[inside].astype(np.int64), col[inside].astype(np.int64)]
    # the holes: the known original pixels mapping into them, the one nearest the centre
    rows0, cols0 = np.nonzero(known)
    if rows0.size and not out.all():
        uc0, _ = conv.pixel_centres(1, w0)
        _, vc0 = conv.pixel_centres(h0, 1)
        x0, y0 = uc0[0, cols0], vc0[rows0, 0]
        qx = t[0, 0] * x0 + t[0, 1] * y0 + t[0, 2]
        qy = t[1, 0] * x0 + t[1, 1] * y0 + t[1, 2]
        pc, pr = np.floor(qx), np.floor(qy)
        ok = (pc >= 0) & (pc < w) & (pr >= 0) & (pr < h)
        pc, pr = pc[ok].astype(np.int64), pr[ok].astype(np.int64)
        target = pr * w + pc
        hole = out.reshape(-1)[target] == 0
        if hole.any():
            target, pc, pr = target[hole], pc[hole], pr[hole]
            dist = (qx[ok][hole] - u[0, pc]) ** 2 + (qy[ok][hole] - v[pr, 0]) ** 2
            src = values[rows0[ok][hole], cols0[ok][hole]]
            order = np.lexsort((dist, target))  # by target, nearest first
            first = order[np.unique(target[order], return_index=True)[1]]
            out.reshape(-1)[target[first]] = src[first]
    return out


def _measured_views(measured: Measured, rec: Reconstruction) -> List[np.ndarray]:
    """``measured`` as one (H_i, W_i) array per view, checked against ``rec.original_sizes``."""
    n = rec.num_views
    sizes = [tuple(int(x) for x in s) for s in rec.original_sizes]
    if isinstance(measured, np.ndarray):
        want = f"({n}, {sizes[0][0]}, {sizes[0][1]})" if len(set(sizes)) == 1 else f"{n} views of their original sizes"
        if measured.ndim != 3 or measured.shape[0] != n or any(measured.shape[1:] != s for s in sizes):
            raise UserInputError(f"measured: expected {want} (the reconstruction's original image size), "
                                 f"got shape {measured.shape}")
        views = list(measured)
    else:
        views = [np.asarray(m) for m in measured]
        if len(views) != n:
            raise UserInputError(f"measured: expected {n} views (one per view of the reconstruction), got {len(views)}")
        for i, (m, s) in enumerate(zip(views, sizes)):
            if m.shape != s:
                raise UserInputError(f"measured[{i}]: expected shape {s} (the view's original image size), "
                                     f"got {m.shape}")
    for i, m in enumerate(views):
        if m.dtype.kind not in "fiu":
            raise UserInputError(f"measured[{i}]: expected numbers, got {m.dtype}")
    return views


def _scale_shift(teacher: np.ndarray, aligned: np.ndarray) -> Optional[Tuple[float, float]]:
    """(s, t) with ``aligned = s * teacher + t`` where ``aligned`` is positive (the fit
    ``pseudo_label_depth`` applied, read back from its result to float32 precision); None
    when no pixel is positive."""
    pos = (aligned > 0) & np.isfinite(teacher)
    if pos.sum() < 2:
        return None
    a = np.stack([teacher[pos], np.ones(int(pos.sum()))], 1)
    sol = np.linalg.lstsq(a, aligned[pos].astype(np.float64), rcond=None)[0]
    return float(sol[0]), float(sol[1])


def align_to_measured(rec: Reconstruction, measured: Measured, *,
                      min_points: int = 16) -> Tuple[Reconstruction, Dict[str, object]]:
    """The reconstruction with its depth aligned to measured metric depth, view by view.

    Args:
        rec: a reconstruction of the scene's images (any resize / crop of
            :mod:`core.preprocess`, recorded in ``rec.pixel_transform``).
        measured: (N, H, W) depth at the original images' size (``rec.original_sizes``),
            0 (or non-finite, non-positive) = unknown; or a sequence of N (H_i, W_i) arrays
            when the originals differ in size (:attr:`SceneInputs.measured`).
        min_points: the fewest measured pixels (on the processed grid, not sky, where the
            reconstruction has positive depth) a view needs to be aligned.

    Returns:
        ``(aligned, stats)``.  ``aligned`` is ``rec`` with ``depth`` replaced by
        :func:`core.training.data.pseudo_label_depth`'s (RANSAC scale and shift per view;
        0 where the aligned depth is not positive); views that could not be aligned (fewer than
        ``min_points`` measurements, or a fit with a non-positive scale) get depth 0 and confidence NaN, so
        they are unknown in the labels.  Everything else is ``rec``'s (poses and translations
        are not rescaled).  ``stats``: ``views``, ``aligned`` (count), ``median_abs_rel``
        (median of |aligned - measured| / measured over the measured pixels of the aligned
        views, at most 20,000 evenly spaced per view; None when no view was aligned),
        ``median_scale`` (of the aligned views' scales, None likewise) and ``per_view``: a list
        of ``{"points", "scale", "shift", "abs_rel"}`` (``points``: the measured pixels on the
        processed grid; the others None when the view was not aligned).

    Raises:
        UserInputError: (a ``ValueError``) ``measured`` of the wrong number of views or shape.
    """
    from .training.data import pseudo_label_depth

    if isinstance(min_points, bool) or not isinstance(min_points, (int, np.integer)) or min_points < 2:
        raise UserInputError(f"min_points: expected an integer >= 2, got {min_points!r}")
    views = _measured_views(measured, rec)
    n, h, w = rec.num_views, rec.height, rec.width
    depth = np.zeros((n, h, w), np.float32)
    conf = None if rec.conf is None else np.array(rec.conf, np.float32)
    per_view: List[Dict[str, object]] = []
    rels: List[np.ndarray] = []
    for i in range(n):  # view by view: a scene of memory maps stays on disk
        m = measured_to_processed(views[i], rec.pixel_transform[i], (h, w))
        teacher = np.asarray(rec.depth[i], np.float64)
        m = np.where(rec.valid_mask(None, drop_sky=True, views=slice(i, i + 1))[0], m, 0)
        known = (m > 0) & np.isfinite(teacher)  # what pseudo_label_depth fits to
        points = int(known.sum())
        fit = None
        if points >= min_points:
            # seed i: what pseudo_label_depth gives view i of the whole scene at seed 0
            aligned = pseudo_label_depth(teacher[None], m[None], min_points, seed=i)[0]
            fit = _scale_shift(teacher, aligned)
        if fit is None or not fit[0] > 0:
            if conf is not None:
                conf[i] = np.nan  # unknown: left out of the "auto" threshold (exports write it as 0)
            per_view.append({"points": points, "scale": None, "shift": None, "abs_rel": None})
            continue
        depth[i] = aligned
        rel = np.abs(aligned[known].astype(np.float64) - m[known]) / m[known]
        rels.append(rel[:: max(1, rel.size // _ABS_REL_SAMPLES)][:_ABS_REL_SAMPLES])
        per_view.append({"points": points, "scale": fit[0], "shift": fit[1], "abs_rel": float(np.median(rel))})
    scales = [p["scale"] for p in per_view if p["scale"] is not None]
    stats: Dict[str, object] = {
        "views": n,
        "aligned": len(scales),
        "median_abs_rel": float(np.median(np.concatenate(rels))) if rels else None,
        "median_scale": float(np.median(scales)) if scales else None,
        "per_view": per_view,
    }
    return dataclasses.replace(rec, depth=depth, conf=conf), stats


__all__ = ["SceneInputs", "scene_inputs", "align_to_measured", "measured_to_processed"]
