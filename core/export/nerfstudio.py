"""nerfstudio dataset folders: ``transforms.json`` + images (+ seed points, + depth), numpy + Pillow.

Any nerfstudio method reads the folder with its ``nerfstudio-data`` dataparser
(``ns-train splatfacto --data FOLDER``).  Choices:

* **Intrinsics at the processed size.**  The images written are the processed images the
  network saw, so per-frame ``fl_x fl_y cx cy w h`` are K at the processed resolution,
  unchanged (nerfstudio casts rays through pixel centres at +0.5, as ours).
* **Poses** are OpenGL camera-to-world (:func:`conventions.opencv_w2c_to_opengl_c2w`); the
  world is the reconstruction's own.  ``applied_transform`` is written as the identity: the
  dataparser composes it into ``dataparser_transform`` and, without it, assumes a legacy
  COLMAP axis swap when a ``colmap/sparse/0`` folder sits beside the JSON.
* **Seed points** ``sparse_pc.ply`` (``ply_file_path``) are in the same world as the poses;
  the dataparser reads them with Open3D (it uses ``x y z`` and ``red green blue``).
* **Depth** (optional) as 16-bit PNGs (``depth_file_path``), z-depth = value *
  ``depth_unit_scale_factor``, recorded in the JSON.  nerfstudio does not read that key: it
  takes the config option of the same name, whose default 1e-3 is what is written unless the
  depth would overflow 16 bits (then pass the recorded value as
  ``--pipeline.datamanager.dataparser.depth-unit-scale-factor``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from .. import conventions as conv
from ..reconstruction import Reconstruction, atomic_folder
from .depth_images import default_depth_unit, depth_to_uint16, file_stems, largest_depth, map_views, save_png
from .ply import write_point_ply

PathLike = Union[str, os.PathLike]

__all__ = ["depth_to_uint16", "write_nerfstudio"]


def write_nerfstudio(folder: PathLike, rec: Reconstruction, *, images: bool = True, depth: bool = False,
                     points: bool = True, conf_threshold: Union[None, float, str] = "auto", point_stride: int = 2,
                     overwrite: bool = False, workers: Optional[int] = None) -> Path:
    """Write a nerfstudio dataset folder (atomically); returns ``folder``.

    Contents:

    * ``images/<stem>.png``: the processed images (with ``images``; without, the frames still
      name these files, at the processed size, for images supplied by the caller);
    * ``transforms.json``: ``camera_model`` "OPENCV" (no distortion), per frame ``file_path``,
      ``transform_matrix`` (OpenGL camera-to-world, 4x4), ``fl_x fl_y cx cy`` (pixels of the
      processed image) and ``w h``; top-level ``applied_transform`` (identity) and, with the
      options below, ``ply_file_path`` and ``depth_unit_scale_factor``;
    * with ``points``: ``sparse_pc.ply`` seed points (see :func:`write_point_ply`);
    * with ``depth``: ``depth/<stem>.png`` 16-bit z-depth (0 = invalid or sky), referenced by
      each frame's ``depth_file_path``.

    Args:
        folder: the dataset folder.
        rec: the reconstruction (not modified).
        conf_threshold: the seed points' confidence filter (see :meth:`Reconstruction.points`).
        point_stride: the seed points' pixel stride.
        overwrite: replace an existing ``folder``; otherwise an existing one is an error.
        workers: threads writing the per-view PNGs (default: the CPUs, see
            :func:`~core.export.depth_images.export_workers`; 1: one after the other), by
            :func:`~core.export.depth_images.encode_png`.

    Raises:
        ValueError: no seed point passes the filters.
        FileExistsError: ``folder`` exists and ``overwrite`` is False.
    """
    folder = Path(folder)
    stems = file_stems(rec)
    c2w = conv.opencv_w2c_to_opengl_c2w(rec.extrinsics)
    unit = default_depth_unit(largest_depth(rec)) if depth else None
    with atomic_folder(folder, overwrite) as tmp:
        if points:  # first: the most likely to fail (threshold too high)
            write_point_ply(tmp / "sparse_pc.ply", rec, conf_threshold=conf_threshold, stride=point_stride)
        if images:
            (tmp / "images").mkdir()
        if depth:
            (tmp / "depth").mkdir()

        def one_view(i: int) -> Dict[str, Any]:  # in threads (PNG encoding releases the GIL)
            stem, k = stems[i], rec.intrinsics[i]
            frame: Dict[str, Any] = {
                "file_path": f"images/{stem}.png",
                "transform_matrix": c2w[i].tolist(),
                "fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2]),
                "w": rec.width, "h": rec.height,
            }
            if images:
                save_png(rec.images[i], tmp / "images" / f"{stem}.png")
            if depth:
                valid = rec.valid_mask(None, drop_sky=True, views=slice(i, i + 1))[0]
                q, _ = depth_to_uint16(np.where(valid, rec.depth[i], np.nan), unit)
                save_png(q, tmp / "depth" / f"{stem}.png")
                frame["depth_file_path"] = f"depth/{stem}.png"
            return frame

        frames = map_views(one_view, len(stems), workers)
        meta: Dict[str, Any] = {
            "camera_model": "OPENCV",
            "frames": frames,
            "applied_transform": np.eye(4)[:3].tolist(),
            "da3": {"model": rec.model, "is_metric": rec.is_metric, "image_names": list(rec.image_names),
                    "world": "the reconstruction's world (OpenCV-style for predicted poses)",
                    "intrinsics": "processed image size"},
        }
        if points:
            meta["ply_file_path"] = "sparse_pc.ply"
        if depth:
            meta["depth_unit_scale_factor"] = unit
        (tmp / "transforms.json").write_text(json.dumps(meta, indent=2))
    return folder
