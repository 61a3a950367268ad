"""core/render.py as of commit 8865414 (before issue 17 part 3), kept only so that
benchmarks/bench_render.py and the tests can compare the tile-binned rasteriser with it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from da3_plugins.core.model.rotation import quat_wxyz_to_matrix
from da3_plugins.core.seeds import EPS2D

TILE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99


@dataclass
class RenderOutput:
    """``rgb`` (H, W, 3), ``alpha`` (H, W) accumulated opacity, ``depth`` (H, W) expected z-depth
    (alpha-weighted, divided by alpha; 0 where nothing was drawn)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


def project(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, k: Tensor, width: int, height: int,
            eps2d: float = EPS2D, near: float = 0.01):
    """-> (means2d (G, 2), cov2d (G, 2, 2) with eps2d, depth (G,), valid (G,) bool)."""
    r = viewmat[:3, :3]
    cam = means @ r.T + viewmat[:3, 3]
    rot = quat_wxyz_to_matrix(quats)
    m = rot * scales[:, None, :]
    cov = r @ (m @ m.transpose(-1, -2)) @ r.T
    tx, ty, tz = cam.unbind(-1)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    z = tz.clamp(min=near)
    # clamp the Jacobian's x/z, y/z a little outside the frustum (as 3DGS / gsplat)
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    jx = z * torch.clamp(tx / z, min=-lim_x_neg, max=lim_x_pos)
    jy = z * torch.clamp(ty / z, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * jx / z**2, zero, fy / z, -fy * jy / z**2], -1).reshape(-1, 2, 3)
    cov2d = jac @ cov @ jac.transpose(-1, -2) + eps2d * torch.eye(2, dtype=means.dtype, device=means.device)
    means2d = torch.stack([fx * tx / z + cx, fy * ty / z + cy], -1)
    return means2d, cov2d, tz, tz > near


def sh_colors(harmonics: Tensor, means: Tensor, camera_center: Tensor) -> Tensor:
    """(G, 3, K) colour-major SH -> (G, 3) RGB seen from ``camera_center`` (+0.5, clamped at 0)."""
    from da3_plugins.core.model.gaussians import real_sh_basis

    degree = int(round(math.sqrt(harmonics.shape[-1]))) - 1
    dirs = means - camera_center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    basis = real_sh_basis(dirs, degree)  # (G, K)
    return ((harmonics * basis[:, None, :]).sum(-1) + 0.5).clamp(min=0.0)


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmat: Tensor,
              k: Tensor, width: int, height: int, background: Optional[Tensor] = None, eps2d: float = EPS2D,
              near: float = 0.01) -> RenderOutput:
    """Render Gaussians through one pinhole camera.

    Args:
        means (G, 3), quats (G, 4) (w, x, y, z), scales (G, 3) linear, opacities (G,) in [0, 1],
        colors (G, 3) RGB or (G, 3, K) SH coefficients; viewmat (4, 4) or (3, 4) OpenCV
        world-to-camera; k (3, 3) pixels.  Everything differentiable except the tile culling.
    """
    dtype, device = means.dtype, means.device
    if background is None:
        background = torch.zeros(3, dtype=dtype, device=device)
    rgb_out = torch.zeros(height, width, 3, dtype=dtype, device=device)
    alpha_out = torch.zeros(height, width, dtype=dtype, device=device)
    depth_out = torch.zeros(height, width, dtype=dtype, device=device)
    means2d, cov2d, depth, valid = project(means, quats, scales, viewmat, k, width, height, eps2d, near)
    if colors.dim() == 3:
        center = -(viewmat[:3, :3].T @ viewmat[:3, 3])
        colors = sh_colors(colors, means, center)
    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
    conic = torch.stack([cov2d[:, 1, 1], -cov2d[:, 0, 1], cov2d[:, 0, 0]], -1) / det[:, None]
    with torch.no_grad():
        mid = 0.5 * (cov2d[:, 0, 0] + cov2d[:, 1, 1])
        radius = 3.0 * torch.sqrt(mid + torch.sqrt((mid * mid - det).clamp(min=0.01)))
        keep = valid & (det > 0) & (means2d[:, 0] + radius > 0) & (means2d[:, 0] - radius < width) \
            & (means2d[:, 1] + radius > 0) & (means2d[:, 1] - radius < height)
        order = torch.argsort(depth)
        order = order[keep[order]]
    if order.numel() == 0:
        rgb_out = rgb_out + background
        return RenderOutput(rgb_out, alpha_out, depth_out)
    m2, con, col, op, dep, rad = (means2d[order], conic[order], colors[order], opacities[order], depth[order],
                                  radius[order].detach())
    for ty in range(0, height, TILE):
        for tx in range(0, width, TILE):
            x1, y1 = min(tx + TILE, width), min(ty + TILE, height)
            with torch.no_grad():
                hit = (m2[:, 0] + rad > tx) & (m2[:, 0] - rad < x1) & (m2[:, 1] + rad > ty) & (m2[:, 1] - rad < y1)
                idx = torch.nonzero(hit)[:, 0]
            if idx.numel() == 0:
                rgb_out[ty:y1, tx:x1] = background
                continue
            ys, xs = torch.meshgrid(torch.arange(ty, y1, device=device, dtype=dtype) + 0.5,
                                    torch.arange(tx, x1, device=device, dtype=dtype) + 0.5, indexing="ij")
            dx = xs.reshape(-1, 1) - m2[idx, 0]  # (P, g)
            dy = ys.reshape(-1, 1) - m2[idx, 1]
            c = con[idx]
            power = -0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) - c[:, 1] * dx * dy
            alpha = (op[idx] * torch.exp(power)).clamp(max=ALPHA_MAX)
            alpha = torch.where((alpha >= ALPHA_MIN) & (power <= 0), alpha, torch.zeros_like(alpha))
            trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
            weight = alpha * trans  # (P, g)
            acc = weight.sum(1)
            rgb = weight @ col[idx] + (1 - acc)[:, None] * background
            d = (weight @ dep[idx]) / acc.clamp(min=1e-10)
            rgb_out[ty:y1, tx:x1] = rgb.reshape(y1 - ty, x1 - tx, 3)
            alpha_out[ty:y1, tx:x1] = acc.reshape(y1 - ty, x1 - tx)
            depth_out[ty:y1, tx:x1] = torch.where(acc > 0, d, torch.zeros_like(d)).reshape(y1 - ty, x1 - tx)
    return RenderOutput(rgb_out, alpha_out, depth_out)


def render_gaussian_set(gaussians, w2c, k, width: int, height: int, background=(0.0, 0.0, 0.0),
                        device: str = "cpu") -> RenderOutput:
    """Render a :class:`~.reconstruction.GaussianSet` (numpy) through an OpenCV camera."""
    import numpy as np

    def t(a):
        return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)

    vm = np.eye(4)
    vm[:3] = np.asarray(w2c)[:3]
    with torch.no_grad():
        return rasterize(t(gaussians.means), t(gaussians.rotations), t(gaussians.scales), t(gaussians.opacities),
                         t(gaussians.harmonics), t(vm), t(k), width, height, t(background))
