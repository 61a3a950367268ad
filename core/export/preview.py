"""A preview picture of a reconstruction: input views, colour depth maps and a rendered novel
view of the point cloud, in one PNG (rendered with the core's pure-PyTorch rasteriser)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from .. import conventions as conv
from ..reconstruction import GaussianSet, Reconstruction, atomic_path
from ..seeds import rgb_to_sh_dc, seed_scales
from .depth_images import colorize_depth

PathLike = Union[str, os.PathLike]
PREVIEW_FOOTPRINT = 0.8
"""Splat width (standard deviation, in pixels of the view a point came from) of the preview's
novel view.  Wider than the seed rule's default: the novel camera stands away from the input
cameras, where the default's splats leave pinholes between neighbouring points."""


def points_as_gaussians(rec: Reconstruction, conf_threshold="auto", max_points: int = 200_000,
                        seed: int = 0) -> GaussianSet:
    """One round Gaussian per reconstructed point, about a pixel wide where it was seen
    (:func:`core.seeds.seed_scales` with :data:`PREVIEW_FOOTPRINT`), with the pixel's colour (SH degree 0) and opacity 0.95.
    Above ``max_points`` a random subset is kept, and the seed rule widens each Gaussian by the
    square root of the thinning, so surfaces stay closed."""
    cloud, total = rec.sample_points(max_points, conf_threshold, seed=seed)  # view by view
    pts, colors, view = cloud.positions.astype(np.float64), cloud.colors, cloud.view
    density = max_points / total if total > max_points else 1.0
    scale = seed_scales(pts, view, rec.extrinsics, rec.intrinsics, density, footprint=PREVIEW_FOOTPRINT)
    g = len(pts)
    return GaussianSet(means=pts, scales=np.repeat(scale[:, None], 3, 1), rotations=np.tile([1.0, 0, 0, 0], (g, 1)),
                       harmonics=rgb_to_sh_dc(colors)[:, :, None], opacities=np.full(g, 0.95), view=view)


def novel_view(rec: Reconstruction, pull_back: float = 0.6, lift: float = 0.25):
    """A camera behind and above the mean input camera, looking at the scene centre:
    (w2c (3, 4), K (3, 3)) at the processed size."""
    c2w = rec.camera_to_world
    centres = c2w[:, :3, 3]
    forward = c2w[:, :3, 2].mean(0)
    forward /= max(np.linalg.norm(forward), 1e-9)
    down = c2w[:, :3, 1].mean(0)
    depth = float(np.median(rec.depth[rec.depth > 0])) if (rec.depth > 0).any() else 1.0
    target = centres.mean(0) + forward * depth
    eye = centres.mean(0) - forward * pull_back * depth - down * lift * depth
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(down, z)
    if np.linalg.norm(x) < 1e-9:
        x = c2w[0, :3, 0]
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], 1)
    pose[:3, 3] = eye
    k = rec.intrinsics[0].copy()
    k[0, 0] *= 0.8
    k[1, 1] *= 0.8
    return conv.c2w_to_w2c(pose)[:3], k


def preview_image(rec: Reconstruction, max_views: int = 4, conf_threshold="auto", render_scale: float = 0.5,
                  max_points: int = 60_000) -> np.ndarray:
    """(H', W', 3) uint8: a row of input views, a row of their depth maps (turbo colours, near
    = red... far = blue) and the point cloud rendered from a pulled-back novel camera.

    The novel view is rendered at ``render_scale`` of the row's size from at most
    ``max_points`` points and upsampled (the CPU rasteriser's time grows with both)."""
    from PIL import Image

    from ..render import render_gaussian_set

    if not 0 < render_scale <= 1:
        raise ValueError(f"render_scale must be in (0, 1], got {render_scale}")

    n = min(len(rec), max_views)
    pick = np.linspace(0, len(rec) - 1, n).round().astype(int)
    h, w = rec.height, rec.width
    row1 = np.concatenate([rec.images[i] for i in pick], 1)
    row2 = np.concatenate([colorize_depth(rec.depth[i], rec.depth[i] > 0) for i in pick], 1)
    gs = points_as_gaussians(rec, conf_threshold=conf_threshold, max_points=max_points)
    w2c, k = novel_view(rec)
    rw, rh = row1.shape[1], int(round(row1.shape[1] * h / w / max(1, n) * min(n, 2)))
    sw, sh = max(1, round(rw * render_scale)), max(1, round(rh * render_scale))
    scale = sw / w
    k_r = k.copy()
    k_r[0] *= scale
    k_r[1] *= scale
    k_r[1, 2] = sh / 2
    out = render_gaussian_set(gs, w2c, k_r, sw, sh, background=(0.12, 0.12, 0.14))
    row3 = (out.rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    if (sw, sh) != (rw, rh):
        row3 = np.asarray(Image.fromarray(row3).resize((rw, rh), Image.BILINEAR))
    return np.concatenate([row1, row2, row3], 0)


def write_preview(path: PathLike, rec: Reconstruction, **options) -> Path:
    """Write :func:`preview_image` as a PNG (atomically)."""
    from PIL import Image

    img = preview_image(rec, **options)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path
