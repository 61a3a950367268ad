"""PLY writers: coloured point clouds and 3-D Gaussian splats (numpy only).

Both are binary little-endian PLY files with one ``vertex`` element, written to a temporary
name and renamed (an interrupted export leaves nothing behind).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from ..reconstruction import GaussianSet, PointCloud, Reconstruction, atomic_path

PathLike = Union[str, os.PathLike]

_PLY_TYPES = {"f4": "float", "u1": "uchar", "i4": "int", "f8": "double", "u4": "uint", "i2": "short", "u2": "ushort"}


def _write_vertex_ply(path: PathLike, fields, comments=()) -> Path:
    """fields: list of (name, 1-D array with a dtype in _PLY_TYPES) of equal length."""
    n = len(fields[0][1])
    dtype = np.dtype([(name, "<" + np.asarray(arr).dtype.str[1:]) for name, arr in fields])
    data = np.empty(n, dtype=dtype)
    for name, arr in fields:
        data[name] = arr
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {c}" for c in comments]
    header.append(f"element vertex {n}")
    header += [f"property {_PLY_TYPES[dtype[name].str[1:]]} {name}" for name, _ in fields]
    header.append("end_header")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(data.tobytes())
    return path


def write_point_ply(path: PathLike, source: Union[Reconstruction, PointCloud], *,
                    conf_threshold: Union[None, float, str] = "auto", stride: int = 1) -> Path:
    """Coloured points: ``x y z`` (float), ``red green blue`` (uchar), ``confidence`` (float),
    ``view`` (int, the source image).

    Args:
        source: a Reconstruction (points from depth, see :meth:`Reconstruction.points`) or a
            PointCloud.
        conf_threshold: for a Reconstruction: a number, None (keep all) or "auto" (the
            official percentile rule).
    """
    cloud = source.points(conf_threshold=conf_threshold, stride=stride) if isinstance(source, Reconstruction) else source
    if len(cloud) == 0:
        raise ValueError(f"conf_threshold: no point passes the filters (threshold {conf_threshold!r}); lower it")
    pos = cloud.positions.astype(np.float32)
    col = cloud.colors.astype(np.uint8)
    return _write_vertex_ply(path, [
        ("x", pos[:, 0]), ("y", pos[:, 1]), ("z", pos[:, 2]),
        ("red", col[:, 0]), ("green", col[:, 1]), ("blue", col[:, 2]),
        ("confidence", cloud.confidence.astype(np.float32)), ("view", cloud.view.astype(np.int32)),
    ], comments=["da3-plugins point cloud (world frame of the reconstruction, OpenCV axes)"])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p)).astype(np.float32)


def write_gaussian_ply(path: PathLike, source: Union[Reconstruction, GaussianSet], *,
                       include_rest: bool = True, prune_border: bool = False,
                       min_opacity: float = 0.0) -> Path:
    """3-D Gaussians in the layout of the original 3DGS code, which viewers and trainers read.

    Properties (float32): ``x y z nx ny nz f_dc_0..2 [f_rest_0..] opacity scale_0..2 rot_0..3``.
    ``f_dc`` are the degree-0 SH coefficients; ``f_rest`` (with ``include_rest`` and degree > 0)
    hold the higher bands channel by channel (all of red, then green, then blue), as 3DGS
    writes them; ``opacity`` is a logit; ``scale_*`` are natural logs; ``rot_*`` the (w, x, y, z)
    quaternion slots as stored in :class:`GaussianSet`.

    Args:
        prune_border: drop Gaussians of the outer 8/256 of each image side (the official
            exporter does; needs ``view`` and a Reconstruction for the image size).
        min_opacity: drop Gaussians below this opacity.
    """
    rec = source if isinstance(source, Reconstruction) else None
    gs = source.gaussians if rec is not None else source
    if gs is None:
        raise ValueError("gaussians: the reconstruction has no Gaussians (run with infer_gs=True on a model with a Gaussian head)")
    keep = gs.opacities >= min_opacity
    if prune_border:
        if rec is None or gs.view is None or len(gs) != rec.num_views * rec.height * rec.width:
            raise ValueError("prune_border: needs a Reconstruction with one Gaussian per pixel")
        h, w = rec.height, rec.width
        bh, bw = int(8 / 256 * h), int(8 / 256 * w)
        rows = np.arange(h)[:, None].repeat(w, 1)
        cols = np.arange(w)[None, :].repeat(h, 0)
        inner = ((rows >= bh) & (rows < h - bh) & (cols >= bw) & (cols < w - bw)).reshape(-1)
        keep &= np.tile(inner, rec.num_views)
    if not keep.any():
        raise ValueError("min_opacity: no Gaussian passes the filters")
    n_coeff = gs.harmonics.shape[2]
    harm = gs.harmonics[keep]
    fields = [("x", gs.means[keep, 0]), ("y", gs.means[keep, 1]), ("z", gs.means[keep, 2])]
    zeros = np.zeros(int(keep.sum()), np.float32)
    fields += [("nx", zeros), ("ny", zeros), ("nz", zeros)]
    fields += [(f"f_dc_{c}", harm[:, c, 0]) for c in range(3)]
    if include_rest and n_coeff > 1:
        rest = harm[:, :, 1:].reshape(len(harm), -1)  # channel-major: R's bands, then G's, then B's
        fields += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    fields.append(("opacity", _logit(gs.opacities[keep])))
    log_scales = np.log(np.maximum(gs.scales[keep], 1e-12)).astype(np.float32)
    fields += [(f"scale_{i}", log_scales[:, i]) for i in range(3)]
    fields += [(f"rot_{i}", gs.rotations[keep, i]) for i in range(4)]
    fields = [(name, np.ascontiguousarray(arr, dtype=np.float32)) for name, arr in fields]
    return _write_vertex_ply(path, fields, comments=["da3-plugins 3D Gaussians (3DGS layout)"])


def read_gaussian_ply(path: PathLike) -> GaussianSet:
    """Read a 3DGS-layout PLY (binary little-endian, float32 properties) into a GaussianSet."""
    path = Path(path)
    with open(path, "rb") as fh:
        header = []
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: not a PLY file (no end_header)")
            header.append(line.decode("ascii", "replace").strip())
            if header[-1] == "end_header":
                break
        if header[0] != "ply" or "format binary_little_endian 1.0" not in header:
            raise ValueError(f"{path}: expected a binary little-endian PLY")
        count, names = 0, []
        for h in header:
            parts = h.split()
            if parts[:2] == ["element", "vertex"]:
                count = int(parts[2])
            elif parts[:1] == ["property"]:
                if parts[1] != "float":
                    raise ValueError(f"{path}: property {parts[-1]} is {parts[1]}, expected float")
                names.append(parts[2])
        data = np.frombuffer(fh.read(count * 4 * len(names)), dtype=np.dtype([(n, "<f4") for n in names]), count=count)
    rest = sorted((n for n in names if n.startswith("f_rest_")), key=lambda n: int(n.split("_")[-1]))
    k = 1 + len(rest) // 3
    harm = np.zeros((count, 3, k), np.float32)
    for c in range(3):
        harm[:, c, 0] = data[f"f_dc_{c}"]
    if rest:
        harm[:, :, 1:] = np.stack([data[n] for n in rest], -1).reshape(count, 3, k - 1)
    return GaussianSet(
        means=np.stack([data[a] for a in "xyz"], -1),
        scales=np.exp(np.stack([data[f"scale_{i}"] for i in range(3)], -1)),
        rotations=np.stack([data[f"rot_{i}"] for i in range(4)], -1),
        harmonics=harm,
        opacities=1.0 / (1.0 + np.exp(-data["opacity"].astype(np.float64))),
    )
