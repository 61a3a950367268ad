"""A pure-PyTorch 3-D Gaussian rasteriser: runs on any device, differentiable.

For previews, videos and training where gsplat's CUDA kernels are not available.  The steps
are those of 3-D Gaussian splatting and gsplat:

1. world -> camera (OpenCV world-to-camera ``viewmat``); covariance Sigma = R S S^T R^T;
2. perspective projection of the mean with K (continuous pixel coordinates, pixel centres at
   +0.5) and of the covariance with the Jacobian of the projection (EWA), plus ``eps2d`` on the
   diagonal (0.3 px^2, as gsplat); Gaussians behind ``near`` are dropped;
3. colours from spherical harmonics evaluated along the view direction (+0.5, clamped at 0),
   or given RGB;
4. compositing front to back, per pixel:
   alpha = min(0.99, opacity * exp(-d^T Sigma2d^-1 d / 2)), ignored below 1/255;
   colour = sum_i T_i alpha_i c_i + T_final * background with T_i = prod_{j<i} (1 - alpha_j);
   a Gaussian counts only while the transmittance in front of it is T_i >= 1e-4 (``T_MIN``),
   so a pixel stops once it is opaque (3DGS's early termination; what it leaves out is below
   1e-4 of the colour).

How step 4 runs (gsplat's algorithm, in batched tensor operations):

* **Binning.**  alpha >= 1/255 only inside the ellipse d^T Sigma2d^-1 d <= 2 ln(255 opacity)
  (at most 3.33 sigma), so each Gaussian goes to the ``TILE`` x ``TILE`` tiles that ellipse's
  bounding box touches: nothing it draws is cut off, and the image does not depend on the
  tiling.  One stable sort of the (tile, Gaussian) pairs, made in depth order, gives every tile
  its list front to back (int32 lists: memory grows with the pairs, not with Gaussians x tiles).
* **Blending.**  All tiles advance together through their lists, ``CHUNK`` Gaussians per step.
  In a step, log2 alpha of every pixel x Gaussian pair is one matrix product (a quadratic form
  in the pixel's offset from its tile centre), then exp2; T runs over the chunk slab by slab,
  vectorised over tiles and pixels; the sums are batched matrix products.  A tile leaves once
  all its pixels have T < ``T_MIN`` or its list is done.  The pixel work goes in batches of at
  most ``BLOCK`` pixel x Gaussian pairs, so a few such buffers are all it holds at a time.
* **Backward** (a :class:`torch.autograd.Function`) replays the steps back to front from the
  saved T in front of each chunk (pixels x steps), recomputing alpha and T, and accumulates the
  gradients of the 2-D means, conics, opacities, colours and depths; projection and SH colours
  are ordinary autograd.

Quaternions are (w, x, y, z), the order :class:`~.reconstruction.GaussianSet` stores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .seeds import EPS2D

TILE = 8
"""Tile side in pixels (8 beat 4 and 16 on the benchmark's scenes)."""
CHUNK = 32
"""Gaussians per tile per step."""
BLOCK = 1 << 21
"""Pixel x Gaussian pairs per batch (a few float buffers of this size are alive at a time): on 2
cores 2^21 beat 2^19, 2^20 and 2^22 (a transmittance slab of 64k pixels is worth two threads)."""
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
"""A Gaussian behind a transmittance below this is not drawn (and a pixel stops there)."""


@dataclass
class RenderOutput:
    """``rgb`` (H, W, 3), ``alpha`` (H, W) accumulated opacity, ``depth`` (H, W) expected z-depth
    (alpha-weighted, divided by alpha; 0 where nothing was drawn)."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor


def _project_columns(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, k: Tensor, width: int,
                     height: int, eps2d: float = EPS2D, near: float = 0.01) -> "tuple[Tensor, ...]":
    """:func:`project` as (G,) columns: mx, my, cov2d xx, xy, yy (with eps2d), depth.

    cov2d = J W R S S^T R^T W^T J^T written out per Gaussian on contiguous (G,) vectors: several
    times faster than batched 3 x 3 products or strided (G, 3) columns."""
    r = viewmat[:3, :3]
    tx, ty, tz = torch.addmm(viewmat[:3, 3:4], r, means.T)  # camera coordinates, (3, G)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    iz = 1.0 / tz.clamp(min=near)
    # clamp the Jacobian's x/z, y/z a little outside the frustum (as 3DGS / gsplat)
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    ux = torch.clamp(tx * iz, min=-lim_x_neg, max=lim_x_pos)
    uy = torch.clamp(ty * iz, min=-lim_y_neg, max=lim_y_pos)
    # the rows of J W, J = [[fx / z, 0, -fx ux / z], [0, fy / z, -fy uy / z]]
    fz, gz = fx * iz, fy * iz
    a0 = fz * (r[0, :, None] - ux * r[2, :, None])
    a1 = gz * (r[1, :, None] - uy * r[2, :, None])
    # R of the (w, x, y, z) quaternion (:func:`~.model.rotation.quat_wxyz_to_matrix`'s), times S
    q = quats.T
    w, x, y, z = q
    s = 2.0 / (q * q).sum(0)
    sx, sy, sz = s * x, s * y, s * z
    xx, yy, zz, xy, xz, yz, wx, wy, wz = sx * x, sy * y, sz * z, sx * y, sx * z, sy * z, sx * w, sy * w, sz * w
    rot = torch.stack([1 - yy - zz, xy - wz, xz + wy, xy + wz, 1 - xx - zz, yz - wx, xz - wy, yz + wx, 1 - xx - yy])
    m = rot.view(3, 3, -1) * scales.T[None]
    b0 = (a0[:, None] * m).sum(0)  # the rows of J W R S, (3, G)
    b1 = (a1[:, None] * m).sum(0)
    return (fx * tx * iz + cx, fy * ty * iz + cy, (b0 * b0).sum(0) + eps2d, (b0 * b1).sum(0),
            (b1 * b1).sum(0) + eps2d, tz)


def project(means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, k: Tensor, width: int, height: int,
            eps2d: float = EPS2D, near: float = 0.01):
    """-> (means2d (G, 2), cov2d (G, 2, 2) with eps2d, depth (G,), valid (G,) bool)."""
    mx, my, cxx, cxy, cyy, depth = _project_columns(means, quats, scales, viewmat, k, width, height, eps2d, near)
    cov2d = torch.stack([cxx, cxy, cxy, cyy], -1).view(-1, 2, 2)
    return torch.stack([mx, my], -1), cov2d, depth, depth > near


def sh_colors(harmonics: Tensor, means: Tensor, camera_center: Tensor) -> Tensor:
    """(G, 3, K) colour-major SH -> (G, 3) RGB seen from ``camera_center`` (+0.5, clamped at 0)."""
    from .model.gaussians import real_sh_basis

    degree = int(round(math.sqrt(harmonics.shape[-1]))) - 1
    dirs = means - camera_center
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    basis = real_sh_basis(dirs, degree)  # (G, K)
    return ((harmonics * basis[:, None, :]).sum(-1) + 0.5).clamp(min=0.0)


# --------------------------------------------------------------------------- binning


@dataclass
class _Bins:
    """Every tile's Gaussians front to back: ``gauss[start[t] : start[t] + count[t]]``."""

    gauss: Tensor  # (N,) int32 Gaussian indices, sorted by (tile, depth)
    start: Tensor  # (tiles,) int64
    count: Tensor  # (tiles,) int64
    tiles_x: int
    tiles_y: int


def _bin(mx: Tensor, my: Tensor, sxx: Tensor, syy: Tensor, det: Tensor, depth: Tensor, valid: Tensor,
         opacities: Tensor, width: int, height: int) -> _Bins:
    """Means (mx, my), cov2d's diagonal and determinant, depth, valid, opacities: all (G,)."""
    with torch.no_grad():
        device = mx.device
        tiles_x, tiles_y = -(-width // TILE), -(-height // TILE)
        tiles = tiles_x * tiles_y
        mx, my, sxx, syy, det = mx.detach(), my.detach(), sxx.detach(), syy.detach(), det.detach()
        # alpha >= 1/255 needs d^T Sigma^-1 d <= k2; that ellipse's half-widths are sqrt(k2 Sigma_xx), ..
        k2 = (2.0 * torch.log(opacities.detach().clamp(min=1e-30) / ALPHA_MIN)).clamp_(min=0)
        rx = torch.sqrt(k2 * sxx) * 1.001 + 1e-3  # a margin for rounding
        ry = torch.sqrt(k2 * syy) * 1.001 + 1e-3
        # the pixels i whose centre i + 0.5 lies in [m - r, m + r]
        x0, x1 = torch.ceil(mx - rx - 0.5), torch.floor(mx + rx - 0.5)
        y0, y1 = torch.ceil(my - ry - 0.5), torch.floor(my + ry - 0.5)
        keep = valid & (det > 0) & (k2 > 0) & torch.isfinite(x0 + x1 + y0 + y1) & (x0 <= x1) & (y0 <= y1) \
            & (x1 >= 0) & (x0 <= width - 1) & (y1 >= 0) & (y0 <= height - 1)
        idx = torch.nonzero(keep)[:, 0]
        # positive floats' IEEE bits sort as integers, several times faster than as floats
        d = depth.detach().index_select(0, idx)
        if d.dtype in (torch.float32, torch.float64) and bool((d > 0).all()):
            d = d.view(torch.int32 if d.dtype == torch.float32 else torch.int64)
        idx = idx.index_select(0, torch.sort(d, stable=True)[1])
        tx0 = (x0.index_select(0, idx).clamp_(min=0) // TILE).long()
        tx1 = (x1.index_select(0, idx).clamp_(max=width - 1) // TILE).long()
        ty0 = (y0.index_select(0, idx).clamp_(min=0) // TILE).long()
        ty1 = (y1.index_select(0, idx).clamp_(max=height - 1) // TILE).long()
        nx = tx1 - tx0 + 1
        n = nx * (ty1 - ty0 + 1)
        total = int(n.sum()) if n.numel() else 0
        if total == 0:
            z = torch.zeros(tiles, dtype=torch.long, device=device)
            return _Bins(torch.zeros(0, dtype=torch.int32, device=device), z, z, tiles_x, tiles_y)
        small = torch.int32 if total < 2**31 else torch.long
        # pair j of Gaussian r (in depth order) is number off = j - first[r] in its box of tiles, row
        # major: tile = base + (off // nx) tiles_x + off % nx = j + (base - first) + (off // nx) (tiles_x - nx)
        first = torch.cumsum(n, 0) - n
        # rank = repeat_interleave(arange, n), 4x faster (every kept Gaussian has n >= 1 tiles)
        rank = torch.zeros(total, dtype=small, device=device)
        rank.index_fill_(0, first[1:], 1)
        rank = torch.cumsum(rank, 0, dtype=small)
        j = torch.arange(total, dtype=small, device=device)
        off = j - first.to(small).index_select(0, rank)
        nxr = nx.to(small).index_select(0, rank)
        tile = torch.div(off, nxr, rounding_mode="floor").mul_(tiles_x - nxr)
        del off, nxr
        tile += j
        del j
        tile += (ty0 * tiles_x + tx0 - first).to(small).index_select(0, rank)
        count = torch.bincount(tile, minlength=tiles)
        if tiles <= 2**15:  # a stable sort of 16-bit keys is about twice as fast
            tile = tile.to(torch.int16)
        perm = torch.sort(tile, stable=True)[1]  # the pairs were made in depth order
        del tile
        gauss = idx.to(small).index_select(0, rank.index_select(0, perm))
        start = torch.cumsum(count, 0) - count
        return _Bins(gauss, start, count, tiles_x, tiles_y)


# --------------------------------------------------------------------------- blending


def _pixel_basis(dtype, device) -> Tensor:
    """(P, 6) [u^2, u v, v^2, u, v, 1] of the pixel centres relative to the tile centre."""
    c = torch.arange(TILE, device=device, dtype=dtype) + 0.5 - TILE / 2
    v, u = torch.meshgrid(c, c, indexing="ij")
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)], -1)


def _table(tab: Tensor) -> Tensor:
    """(6 + C, G) rows [mx, my, a, b, c, log opacity, feats...] (conic (a, b, c)) -> (6 + C + 1, G + 1):
    a row of ones (the accumulated alpha) and a last column, a dummy Gaussian that draws nothing
    (the padding past the end of a tile's list)."""
    tab = torch.cat([tab, torch.ones_like(tab[:1])], 0)
    dummy = torch.zeros(tab.shape[0], 1, dtype=tab.dtype, device=tab.device)
    dummy[2, 0], dummy[4, 0], dummy[5, 0] = 1.0, 1.0, -math.inf
    return torch.cat([tab, dummy], 1).contiguous()


def _gather(bins: _Bins, tiles: Tensor, step: int, k: int, dummy: int) -> Tensor:
    """(B, k) int64 Gaussian indices of the tiles' chunk ``step`` (``dummy`` past a list's end)."""
    start = bins.start.index_select(0, tiles)[:, None]
    pos = start + (step * k + torch.arange(k, device=tiles.device))
    end = start + bins.count.index_select(0, tiles)[:, None]
    g = bins.gauss.index_select(0, pos.view(-1).clamp(max=bins.gauss.numel() - 1)).view(pos.shape).long()
    return g.masked_fill_(pos >= end, dummy)


def _theta(cols: Tensor, tiles: Tensor, tiles_x: int) -> "tuple[Tensor, Tensor, Tensor]":
    """log alpha as a quadratic form in the pixel's offset from its tile centre: theta . basis.

    cols (6+, B, K): mx, my, a, b, c, log opacity (conic (a, b, c)) of a chunk -> theta (6, B, K), and
    the means relative to the tile centres (mu, mv) (B, K)."""
    mu = cols[0] - ((tiles % tiles_x) * TILE + TILE / 2).to(cols.dtype)[:, None]
    mv = cols[1] - ((tiles // tiles_x) * TILE + TILE / 2).to(cols.dtype)[:, None]
    a, b, c, lo = cols[2], cols[3], cols[4], cols[5]
    am, cm, bu, bv = a * mu, c * mv, b * mu, b * mv
    th = torch.stack([-0.5 * a, -b, -0.5 * c, am + bv, cm + bu, lo - 0.5 * (am + 2 * bv) * mu - 0.5 * cm * mv])
    return th, mu, mv


def _theta_backward(g_th: Tensor, cols: Tensor, mu: Tensor, mv: Tensor) -> Tensor:
    """dL/dtheta (6, ...) -> dL/d[mx, my, a, b, c, log opacity] (6, ...)."""
    g0, g1, g2, g3, g4, g5 = g_th
    a, b, c = cols[2], cols[3], cols[4]
    return torch.stack([a * g3 + b * g4 - (a * mu + b * mv) * g5,
                        b * g3 + c * g4 - (c * mv + b * mu) * g5,
                        -0.5 * g0 + mu * g3 - 0.5 * mu * mu * g5,
                        -g1 + mv * g3 + mu * g4 - mu * mv * g5,
                        -0.5 * g2 + mv * g4 - 0.5 * mv * mv * g5,
                        g5])


def _below(value: float, dtype) -> float:
    """The largest number of ``dtype`` below ``value``: threshold keeps x > it, i.e. x >= value."""
    v = torch.tensor(value, dtype=dtype)
    return float(torch.nextafter(v, torch.zeros_like(v)))


SMALL = 1 << 15
"""Below this many elements a product is done elementwise: tiny matrix products start threads
(MKL, batched bmm) that cost more than they save, worst on a loaded machine."""


def _quad(th: Tensor, phi: Tensor, out: Tensor) -> Tensor:
    """(6, B, K) x (P, 6) -> out (B, K, P): sum_c th[c, b, k] phi[p, c]."""
    t = th.reshape(6, -1).T
    if th.numel() * phi.shape[0] <= SMALL:
        return torch.sum(t[:, None, :] * phi, -1, out=out.view(t.shape[0], -1)).view(out.shape)
    return torch.mm(t, phi.T, out=out.view(t.shape[0], -1)).view(out.shape)


def _quad_t(g: Tensor, phi: Tensor) -> Tensor:
    """(B, K, P) x (P, 6) -> (6, B, K): sum_p g[b, k, p] phi[p, c]."""
    gt = g.reshape(-1, g.shape[-1]).T
    if g.numel() * 6 <= SMALL:
        return (gt[None] * phi.T[:, :, None]).sum(1).view(6, *g.shape[:2])
    return torch.mm(phi.T, gt).view(6, *g.shape[:2])


def _sum_k(fe: Tensor, w: Tensor) -> Tensor:
    """(C, B, K) x (B, K, P) -> (B, C, P): sum_k fe[c, b, k] w[b, k, p]."""
    if w.numel() * fe.shape[0] <= SMALL:
        return (fe.permute(1, 0, 2)[..., None] * w[:, None]).sum(2)
    return torch.bmm(fe.permute(1, 0, 2), w)


def _sum_c(fe: Tensor, go: Tensor, out: Tensor) -> Tensor:
    """(C, B, K) x (B, C, P) -> out (B, K, P): sum_c fe[c, b, k] go[b, c, p]."""
    if fe.shape[2] * go.numel() <= SMALL:
        return torch.sum(fe.permute(1, 2, 0)[..., None] * go[:, None], 2, out=out)
    return torch.bmm(fe.permute(1, 2, 0), go, out=out)


def _sum_p(w: Tensor, go: Tensor) -> Tensor:
    """(B, K, P) x (B, C, P) -> (B, K, C): sum_p w[b, k, p] go[b, c, p]."""
    if w.numel() * go.shape[1] <= SMALL:
        return (w[:, :, None, :] * go[:, None]).sum(-1)
    return torch.bmm(w, go.transpose(1, 2))


class _Accumulate:
    """index_add_ into ``target`` in few large calls (each call may start threads)."""

    def __init__(self, target: Tensor, rows: int = 1 << 18):
        self.target, self.rows, self.parts, self.n = target, rows, [], 0

    def add(self, index: Tensor, values: Tensor):
        """index (N,), values (N, C)."""
        self.parts.append((index, values))
        self.n += index.numel()
        if self.n >= self.rows:
            self.flush()

    def flush(self) -> Tensor:
        if self.parts:
            idx, val = zip(*self.parts)
            self.target.index_add_(0, torch.cat(idx), torch.cat(val))
            self.parts, self.n = [], 0
        return self.target


class _Ctx:
    """What a forward and its backward share: the table, pixel basis, thresholds, step size."""

    def __init__(self, tab: Tensor, bins: _Bins):
        self.dtype, self.device = tab.dtype, tab.device
        self.tab = _table(tab).T.contiguous()  # a row per Gaussian: gathering rows is fastest
        self.dummy = self.tab.shape[0] - 1
        # exp2 is several times faster than exp on CPUs: the basis carries the 1 / ln 2
        self.phi = _pixel_basis(self.dtype, self.device)
        self.phi2 = self.phi * (1.0 / math.log(2.0))
        self.alpha_min = _below(ALPHA_MIN, self.dtype)
        self.t_min = _below(T_MIN, self.dtype)
        # alpha = opacity * exp(power <= 0) reaches the clamp only if an opacity does
        self.clamp = tab.shape[1] > 0 and float(tab[5].max()) >= math.log(ALPHA_MAX) - 1e-3
        self.bins = bins
        self.k = max(1, min(CHUNK, int(bins.count.max()) if bins.count.numel() else 1))  # Gaussians per step
        self.per_batch = max(1, BLOCK // (TILE * TILE * self.k))
        self.buffers = {}

    def buffer(self, name: str, *shape: int) -> Tensor:
        """A reused scratch tensor: fresh large ones would each cost page faults."""
        n = math.prod(shape)
        b = self.buffers.get(name)
        if b is None or b.numel() < n:
            b = self.buffers[name] = torch.empty(n, dtype=self.dtype, device=self.device)
        return b[:n].view(shape)

    def chunk(self, tiles: Tensor, step: int):
        """-> the tiles' Gaussians in ``step`` (B, K), their table columns (6 + C + 1, B, K), theta
        (6, B, K), mu, mv (B, K)."""
        gidx = _gather(self.bins, tiles, step, self.k, self.dummy)
        cols = self.tab.index_select(0, gidx.view(-1)).T.view(-1, *gidx.shape)  # strided columns
        return (gidx, cols, *_theta(cols, tiles, self.bins.tiles_x))

    def alpha(self, th: Tensor) -> Tensor:
        """theta (6, B, K) -> alpha (B, K, P), clamped, 0 below 1/255 (in a reused buffer)."""
        alpha = _quad(th, self.phi2, self.buffer("alpha", *th.shape[1:], TILE * TILE)).exp2_()
        if self.clamp:
            alpha.clamp_(max=ALPHA_MAX)
        return torch.threshold_(alpha, self.alpha_min, 0.0)

    def batches(self, n: int):
        """Slices of at most ``per_batch`` tiles."""
        return [slice(i, min(i + self.per_batch, n)) for i in range(0, n, self.per_batch)]


class _Blend(torch.autograd.Function):
    """(tab (6 + C, G) [mx, my, a, b, c, log opacity, feats...], bins) -> per tile (tiles, C + 1, P):
    sum_i w_i [feats_i, 1] with w_i = alpha_i T_i."""

    @staticmethod
    def forward(ctx, tab: Tensor, bins: _Bins):
        c = _Ctx(tab, bins)
        keep = any(ctx.needs_input_grad)
        tiles, p = bins.tiles_x * bins.tiles_y, TILE * TILE
        out = torch.zeros(tiles, c.tab.shape[1] - 6, p, dtype=c.dtype, device=c.device)
        saved = []  # (tiles, step, T in front of the chunk) of every step, for the backward
        active = torch.nonzero(bins.count > 0)[:, 0]
        # the state of the active tiles, compacted when tiles leave
        t_all = torch.ones(active.numel(), p, dtype=c.dtype, device=c.device)
        o_all = torch.zeros(active.numel(), *out.shape[1:], dtype=c.dtype, device=c.device)
        step = 0
        while active.numel():
            _, cols, th, _, _ = c.chunk(active, step)
            if keep:
                saved.append((active, step, t_all.clone()))
            for sl in c.batches(active.numel()):
                w = c.alpha(th[:, sl])  # (B, K, P), alpha for now
                t = t_all[sl]
                for wj in w.unbind(1):  # w_j = alpha_j T_j; T_j+1 = T_j - w_j, 0 once below T_MIN
                    wj.mul_(t)
                    torch.threshold_(t.sub_(wj), c.t_min, 0.0)
                o_all[sl] += _sum_k(cols[6:, sl], w)
            step += 1
            more = (bins.count.index_select(0, active) > step * c.k) & (t_all.amax(1) > 0)
            if not bool(more.all()):
                done, more = torch.nonzero(~more)[:, 0], torch.nonzero(more)[:, 0]
                out.index_copy_(0, active.index_select(0, done), o_all.index_select(0, done))
                active, t_all, o_all = (x.index_select(0, more) for x in (active, t_all, o_all))
        c.buffers.clear()
        ctx.blend = c
        ctx.saved = saved
        return out

    @staticmethod
    def backward(ctx, grad_out):
        c: _Ctx = ctx.blend
        grad_out = grad_out.contiguous()
        # sum over the rest of the list of w_i dL/dw_i, built back to front
        behind = torch.zeros(grad_out.shape[0], grad_out.shape[2], dtype=c.dtype, device=c.device)
        grads = _Accumulate(torch.zeros_like(c.tab))
        k = c.k
        last = None
        for active, step, t_all in reversed(ctx.saved):
            gidx, cols, th, mu, mv = c.chunk(active, step)
            if active is not last:  # the forward's active set changed here: the state of the new set
                if last is not None:
                    behind.index_copy_(0, last, behind_all)
                go_all = grad_out.index_select(0, active)  # (B, C + 1, P)
                behind_all = behind.index_select(0, active)
                last = active
            g_all = torch.empty(gidx.numel(), cols.shape[0], dtype=c.dtype, device=c.device)
            g_all_v = g_all.view(*gidx.shape, -1)
            for sl in c.batches(active.numel()):
                alpha = c.alpha(th[:, sl])  # (B, K, P)
                b, p = alpha.shape[0], alpha.shape[2]
                w = c.buffer("w", b, k, p)
                t = t_all[sl].clone()
                for aj, wj in zip(alpha.unbind(1), w.unbind(1)):  # the forward's w again
                    torch.mul(aj, t, out=wj)
                    torch.threshold_(t.sub_(wj), c.t_min, 0.0)
                go = go_all[sl]
                g_all_v[sl, :, 6:] = _sum_p(w, go)  # dL/d[feats, 1] (B, K, C + 1)
                wg = w.mul_(_sum_c(cols[6:, sl], go, c.buffer("gw", b, k, p)))  # w_j dL/dw_j
                acc = c.buffer("acc", b, k + 1, p)  # sum_{i >= j} w_i dL/dw_i ..
                acc[:, k] = behind_all[sl]  # .. and the later chunks'
                for j in range(k - 1, -1, -1):
                    torch.add(wg[:, j], acc[:, j + 1], out=acc[:, j])
                behind_all[sl] = acc[:, 0]
                # dL/dalpha_j = T_j dL/dw_j - sum_{i > j} w_i dL/dw_i / (1 - alpha_j), dalpha/dpower = alpha:
                # dL/dpower_j = w_j dL/dw_j - alpha_j / (1 - alpha_j) sum_{i > j} w_i dL/dw_i
                odds = torch.sub(alpha, 1.0, out=c.buffer("odds", b, k, p))  # alpha - 1
                g_pow = wg.add_(torch.div(alpha, odds, out=odds).mul_(acc[:, 1:]))
                if c.clamp:
                    g_pow.masked_fill_(alpha >= ALPHA_MAX, 0.0)
                g_th = _quad_t(g_pow, c.phi)  # (6, B, K)
                g_all_v[sl, :, :6] = _theta_backward(g_th, cols[:, sl], mu[sl], mv[sl]).permute(1, 2, 0)
            grads.add(gidx.view(-1), g_all)
        return grads.flush()[:-1, :-1].T, None


def _untile(per_tile: Tensor, bins: _Bins, width: int, height: int) -> Tensor:
    """(tiles, C, P) -> (H, W, C)."""
    c = per_tile.shape[1]
    img = per_tile.reshape(bins.tiles_y, bins.tiles_x, c, TILE, TILE).permute(0, 3, 1, 4, 2)
    return img.reshape(bins.tiles_y * TILE, bins.tiles_x * TILE, c)[:height, :width]


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, viewmat: Tensor,
              k: Tensor, width: int, height: int, background: Optional[Tensor] = None, eps2d: float = EPS2D,
              near: float = 0.01) -> RenderOutput:
    """Render Gaussians through one pinhole camera.

    Args:
        means (G, 3), quats (G, 4) (w, x, y, z), scales (G, 3) linear, opacities (G,) in [0, 1],
        colors (G, 3) RGB or (G, 3, K) SH coefficients; viewmat (4, 4) or (3, 4) OpenCV
        world-to-camera; k (3, 3) pixels.  Everything differentiable except the tile binning.
    """
    dtype, device = means.dtype, means.device
    if background is None:
        background = torch.zeros(3, dtype=dtype, device=device)
    mx, my, cxx, cxy, cyy, depth = _project_columns(means, quats, scales, viewmat, k, width, height, eps2d, near)
    if colors.dim() == 3:
        colors = sh_colors(colors, means, -(viewmat[:3, :3].T @ viewmat[:3, 3]))
    det = cxx * cyy - cxy * cxy
    bins = _bin(mx, my, cxx, cyy, det, depth, depth > near, opacities, width, height)
    inv = 1.0 / det
    log_opacity = torch.log(opacities.clamp(min=torch.finfo(dtype).tiny))  # finite gradients at opacity 0
    tab = torch.cat([torch.stack([mx, my, cyy * inv, -cxy * inv, cxx * inv, log_opacity]), colors.T, depth[None]])
    img = _untile(_Blend.apply(tab, bins), bins, width, height)
    acc = img[..., 4]
    rgb = img[..., :3] + (1.0 - acc)[..., None] * background
    d = img[..., 3] / acc.clamp(min=1e-10)
    return RenderOutput(rgb, acc, torch.where(acc > 0, d, torch.zeros_like(d)))


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
