"""A fly-through video of a reconstruction's 3-D Gaussians, rendered with the core's own
pure-PyTorch rasteriser (any device, no gsplat) and written with OpenCV (mp4v)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .. import conventions as conv
from ..quaternions import matrix_to_quat_wxyz, quat_wxyz_to_matrix
from ..reconstruction import Reconstruction, atomic_path

PathLike = Union[str, os.PathLike]


def _slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - t) * theta) * q0 + np.sin(t * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def camera_path(w2c: np.ndarray, frames: int) -> np.ndarray:
    """World-to-camera poses (frames, 3, 4) passing through the given cameras in order, with
    rotations interpolated by slerp and centres linearly, cosine-eased between cameras."""
    c2w = conv.w2c_to_c2w(w2c)
    if len(c2w) == 1:
        return np.repeat(np.asarray(w2c)[:1, :3], frames, 0)
    quats = matrix_to_quat_wxyz(c2w[:, :3, :3])
    out = []
    for f in range(frames):
        s = f / max(1, frames - 1) * (len(c2w) - 1)
        i = min(int(s), len(c2w) - 2)
        t = 0.5 - 0.5 * np.cos(np.pi * (s - i))
        pose = np.eye(4)
        pose[:3, :3] = quat_wxyz_to_matrix(_slerp(quats[i], quats[i + 1], t))
        pose[:3, 3] = (1 - t) * c2w[i, :3, 3] + t * c2w[i + 1, :3, 3]
        out.append(conv.c2w_to_w2c(pose))
    return np.stack(out)


def write_video(path: PathLike, frames, fps: float = 24.0) -> Path:
    """RGB uint8 frames (an iterable of (H, W, 3), all one size) into an .mp4 (OpenCV, mp4v),
    written atomically: footage for tests and examples (a synthetic camera's video)."""
    import cv2

    if not fps > 0:
        raise ValueError(f"fps: expected a positive number, got {fps}")
    path = Path(path)
    count = 0
    with atomic_path(path) as tmp:
        mp4 = tmp.with_suffix(".mp4")  # OpenCV picks the container from the name
        writer = None
        try:
            for frame in frames:
                frame = np.asarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"{path}: frame {count}: expected (H, W, 3) uint8, got {frame.dtype} {frame.shape}")
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
                    if not writer.isOpened():
                        raise RuntimeError(f"{path}: OpenCV cannot write mp4 videos here")
                elif (frame.shape[1], frame.shape[0]) != size:
                    raise ValueError(f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first "
                                     f"{size[0]}x{size[1]}")
                writer.write(np.ascontiguousarray(frame[..., ::-1]))
                count += 1
            if writer is None:
                raise ValueError(f"{path}: no frames to write")
        except BaseException:
            if writer is not None:
                writer.release()
            mp4.unlink(missing_ok=True)
            raise
        writer.release()
        os.replace(mp4, tmp)
    return path


def write_gaussian_video(path: PathLike, rec: Reconstruction, *, frames: int = 48, fps: int = 24,
                         scale: float = 0.5, background=(0.0, 0.0, 0.0), device: str = "cpu",
                         progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Render ``rec.gaussians`` along a path through the input cameras into an .mp4 video.

    ``scale`` sets the video size relative to the processed images (each side rounded to even).
    """
    from ..render import render_gaussian_set

    if rec.gaussians is None:
        raise ValueError("gaussians: the reconstruction has no Gaussians (run with infer_gs=True on a model with a Gaussian head)")
    if frames < 1 or fps < 1 or not scale > 0:
        raise ValueError(f"frames, fps and scale must be positive (got {frames}, {fps}, {scale})")
    w = max(2, int(round(rec.width * scale / 2)) * 2)
    h = max(2, int(round(rec.height * scale / 2)) * 2)
    k = conv.rescale_intrinsics(rec.intrinsics[0], (rec.height, rec.width), (h, w))
    poses = camera_path(rec.extrinsics, frames)
    gs = rec.gaussians
    if isinstance(gs.means, np.memmap):  # every frame reads them all: once into memory (and writable for torch)
        gs = dataclasses.replace(gs, **{f.name: np.array(getattr(gs, f.name)) for f in dataclasses.fields(gs)
                                        if getattr(gs, f.name) is not None})

    def rendered():
        for f, pose in enumerate(poses):
            out = render_gaussian_set(gs, pose, k, w, h, background=background, device=device)
            yield (out.rgb.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            if progress is not None:
                progress(f + 1, frames)

    return write_video(path, rendered(), fps=fps)
