"""nerfstudio dataset folders: ``transforms.json`` + images (+ seed points, + depth), numpy + Pillow.

Any nerfstudio method reads the folder with its ``nerfstudio-data`` dataparser
(``ns-train splatfacto --data FOLDER``).  The images written are the processed images the
network saw, so the intrinsics are K at the processed resolution, unchanged (nerfstudio's
rays go through pixel centres, as ours).  Poses are OpenGL camera-to-world, through
:func:`conventions.opencv_w2c_to_opengl_c2w`; the world is the reconstruction's own, and
``applied_transform`` is the identity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .. import conventions as conv
from ..reconstruction import Reconstruction, atomic_folder
from .ply import write_point_ply

PathLike = Union[str, os.PathLike]


def depth_to_uint16(depth: np.ndarray, unit: Optional[float] = None):
    """Depth -> (uint16 image, unit) where depth = value * unit; 0 marks invalid pixels.

    ``unit`` defaults to 1e-3 (nerfstudio's default ``depth_unit_scale_factor``: millimetres
    for metric depth) unless the largest depth would overflow, then max_depth / 65535.
    """
    valid = np.isfinite(depth) & (depth > 0)
    top = float(depth[valid].max()) if valid.any() else 1.0
    if unit is None:
        unit = 1e-3 if top / 1e-3 <= 65535 else top / 65535.0
    q = np.zeros(depth.shape, np.uint16)
    q[valid] = np.clip(np.round(depth[valid] / unit), 1, 65535).astype(np.uint16)
    return q, unit


def write_nerfstudio(folder: PathLike, rec: Reconstruction, *, points: bool = True, depth: bool = False,
                     conf_threshold: Union[None, float, str] = "auto", point_stride: int = 2,
                     overwrite: bool = True) -> Path:
    """Write a nerfstudio dataset folder.

    Contents: ``images/<name>.png``, ``transforms.json`` (per-frame ``fl_x fl_y cx cy w h``,
    ``transform_matrix``), with ``points`` a seed point cloud ``sparse_pc.ply`` referenced by
    ``ply_file_path`` (splatfacto starts from it), with ``depth`` 16-bit depth PNGs in
    ``depth/`` referenced by ``depth_file_path``; their unit is in the JSON as
    ``depth_unit_scale_factor`` (pass it to nerfstudio's dataparser option of that name).
    """
    folder = Path(folder)
    with atomic_folder(folder, overwrite) as tmp:
        (tmp / "images").mkdir()
        c2w = conv.opencv_w2c_to_opengl_c2w(rec.extrinsics)
        unit = None
        if depth:
            (tmp / "depth").mkdir()
            _, unit = depth_to_uint16(rec.depth)
        frames = []
        for i, name in enumerate(rec.image_names):
            Image.fromarray(rec.images[i]).save(tmp / "images" / f"{name}.png")
            k = rec.intrinsics[i]
            frame = {
                "file_path": f"images/{name}.png",
                "transform_matrix": c2w[i].tolist(),
                "fl_x": float(k[0, 0]), "fl_y": float(k[1, 1]), "cx": float(k[0, 2]), "cy": float(k[1, 2]),
                "w": rec.width, "h": rec.height,
            }
            if depth:
                q, _ = depth_to_uint16(rec.depth[i], unit)
                Image.fromarray(q).save(tmp / "depth" / f"{name}.png")
                frame["depth_file_path"] = f"depth/{name}.png"
            frames.append(frame)
        meta = {
            "camera_model": "OPENCV",
            "frames": frames,
            "applied_transform": np.eye(4)[:3].tolist(),
            "da3": {"model": rec.model, "is_metric": rec.is_metric, "world": "OpenCV world of the reconstruction"},
        }
        if depth:
            meta["depth_unit_scale_factor"] = unit
        if points:
            write_point_ply(tmp / "sparse_pc.ply", rec, conf_threshold=conf_threshold, stride=point_stride)
            meta["ply_file_path"] = "sparse_pc.ply"
        (tmp / "transforms.json").write_text(json.dumps(meta, indent=2))
    return folder
