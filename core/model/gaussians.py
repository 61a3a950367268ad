"""Per-pixel 3-D Gaussians in world space from the GS head's raw output (DA3-giant).

:class:`GaussianAdapter` turns the raw per-pixel parameters of the GS head plus the
predicted depth and cameras into world-space Gaussians; :func:`rotate_sh` rotates real
spherical-harmonic colour coefficients.  Neither needs e3nn: the Wigner matrices are built
directly from the rotation matrix.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from .camera import as_homogeneous, invert_rigid
from .config import GaussianConfig
from .outputs import Gaussians
from .rotation import matrix_to_quat_xyzw, quat_xyzw_to_matrix
from .sim3 import umeyama_sim3

# --------------------------------------------------------------------------------------
# Real spherical harmonics and their rotation
# --------------------------------------------------------------------------------------


def real_sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real spherical harmonics of unit directions, (..., 3) -> (..., (degree+1)^2).

    Convention (the one 3-D Gaussian splatting's ``eval_sh`` uses): orthonormal real SH
    *with* the Condon-Shortley phase.  Band l occupies slots l^2 .. l^2 + 2l, ordered
    m = -l .. l, and with rho = x + i y (so rho^m = sin^m(theta) e^{i m phi})

        Y_l^0  = K_l^0 P_l(z)
        Y_l^m  = (-1)^m sqrt(2) K_l^m Q_l^m(z) Re(rho^m)      (m > 0)
        Y_l^-m = (-1)^m sqrt(2) K_l^m Q_l^m(z) Im(rho^m)      (m > 0)

    where Q_l^m(z) = P_l^m(z) / (1 - z^2)^(m/2) is the polynomial part of the associated
    Legendre function (without phase) and K_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!).
    E.g. band 1 is C1 * (-y, z, -x) with C1 = 0.4886.
    """
    x, y, z = dirs.unbind(-1)
    # Re/Im of (x + i y)^m for m = 0 .. degree
    re = [torch.ones_like(x)]
    im = [torch.zeros_like(x)]
    for _ in range(degree):
        r_prev, i_prev = re[-1], im[-1]
        re.append(r_prev * x - i_prev * y)
        im.append(r_prev * y + i_prev * x)
    # Q[l][m] polynomial parts of P_l^m, built column by column in m
    q = [[None] * (degree + 1) for _ in range(degree + 1)]
    for m in range(degree + 1):
        q[m][m] = torch.full_like(z, float(math.prod(range(1, 2 * m, 2))))  # (2m-1)!!
        if m + 1 <= degree:
            q[m + 1][m] = (2 * m + 1) * z * q[m][m]
        for l in range(m + 2, degree + 1):
            q[l][m] = ((2 * l - 1) * z * q[l - 1][m] - (l + m - 1) * q[l - 2][m]) / (l - m)

    out = []
    for l in range(degree + 1):
        band = [None] * (2 * l + 1)
        band[l] = math.sqrt((2 * l + 1) / (4 * math.pi)) * q[l][0]
        for m in range(1, l + 1):
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
            c = (-1) ** m * math.sqrt(2.0) * k
            band[l + m] = c * q[l][m] * re[m]
            band[l - m] = c * q[l][m] * im[m]
        out.extend(band)
    return torch.stack(out, -1)


@functools.lru_cache(maxsize=None)
def _fit_directions(degree: int):
    """Fixed, well-spread unit directions (Fibonacci sphere) and, per band, the
    pseudo-inverse of the basis evaluated there (float64, CPU)."""
    n = max(32, 2 * (degree + 1) ** 2)
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (3 - math.sqrt(5)) * i
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack((r * torch.cos(phi), r * torch.sin(phi), z), -1)
    basis = real_sh_basis(dirs, degree)
    pinvs = tuple(torch.linalg.pinv(basis[:, l * l : (l + 1) ** 2]) for l in range(degree + 1))
    return dirs, pinvs


def _nearest_rotation(m: Tensor) -> Tensor:
    """Closest proper rotation to each (..., 3, 3) matrix (SVD polar factor; when the
    polar factor would be a reflection, the weakest singular direction is flipped)."""
    u, _, vh = torch.linalg.svd(m)
    flip = torch.linalg.det(u) * torch.linalg.det(vh) < 0
    sign = torch.ones(m.shape[:-2] + (3,), dtype=m.dtype, device=m.device)
    sign[..., 2] = torch.where(flip, -1.0, 1.0)
    return (u * sign[..., None, :]) @ vh


def sh_rotation_matrices(rot: Tensor, degree: int) -> list:
    """Per band l = 0..degree, the (..., 2l+1, 2l+1) matrix D_l with
    ``rotated = D_l @ coefficients`` (see :func:`rotate_sh`), in float64.

    D_l is fitted exactly from the basis polynomials: with fixed directions d_k, the
    rotated function's samples Y(R^T d_k) are a linear combination of the unrotated
    samples Y(d_k), and a least-squares solve recovers the coefficients of that
    combination (exact up to rounding because each band is rotation invariant).

    The rotations are treated as constants for autograd: their SVD projection has no
    usable gradient at an exact rotation (three equal singular values).
    """
    work_device = rot.device if rot.device.type != "mps" else torch.device("cpu")  # no float64 on mps
    r = _nearest_rotation(rot.detach().to(device=work_device, dtype=torch.float64))
    dirs, pinvs = _fit_directions(degree)
    dirs = dirs.to(work_device)
    # rows of dirs @ R are (R^T d_k)^T
    rotated = real_sh_basis(dirs @ r, degree)  # (..., n, (degree+1)^2)
    return [pinvs[l].to(work_device) @ rotated[..., l * l : (l + 1) ** 2] for l in range(degree + 1)]


def rotate_sh(sh: Tensor, rot: Tensor) -> Tensor:
    """Rotate real SH coefficients: (..., (L+1)^2) by (..., 3, 3) -> (..., (L+1)^2).

    Basis and ordering: see :func:`real_sh_basis` (3DGS convention, Condon-Shortley phase,
    band-major, m = -l..l inside a band).  Any degree L works.  ``rot`` broadcasts against
    ``sh.shape[:-1]`` (e.g. sh (B,S,H,W,3,9) with rot (B,S,1,1,1,3,3)).

    The result c' describes the colour function carried along by ``rot``:
    sum_k c'_k Y_k(d) = sum_k c_k Y_k(rot^T d) for every direction d, so with rot =
    camera-to-world rotation, camera-frame coefficients become world-frame coefficients.
    ``rot`` is first replaced by its nearest proper rotation (SVD).

    This equals the official DA3 ``rotate_sh`` (axes permuted by P = [[0,0,1],[1,0,0],
    [0,1,0]], Euler angles from e3nn's ``matrix_to_angles`` and e3nn's
    ``wigner_D(l, alpha, -beta, gamma)``): that recipe amounts to the rotation above in
    this basis.  Here the matrices are computed in float64 from the rotation matrix
    itself, which avoids the Euler-angle round trip (whose float32 ``acos`` loses
    accuracy near beta = 0 or pi) and any e3nn dependency.
    """
    n = sh.shape[-1]
    degree = math.isqrt(n) - 1
    if (degree + 1) ** 2 != n:
        raise ValueError(f"the last dimension ({n}) is not a square number of SH coefficients")
    if rot.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 3, 3) rotations, got {tuple(rot.shape)}")
    blocks = sh_rotation_matrices(rot, degree)
    out = [sh[..., :1].clone()]  # band 0 is invariant
    for l in range(1, degree + 1):
        d = blocks[l].to(device=sh.device, dtype=sh.dtype)
        out.append((d @ sh[..., l * l : (l + 1) ** 2, None])[..., 0])
    return torch.cat(out, -1)


# --------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------


def _pose_scale(pred_centres: Tensor, gt_centres: Tensor) -> Tensor:
    """(B, S, 3) camera centres -> (B,) Umeyama scale taking predicted to given cameras."""
    try:
        # two views already give a scale (a ratio of baselines); the official evo call
        # accepts them too (its float32 round-off lifts the second singular value above
        # evo's threshold), so collinear centres are allowed here
        _, _, s = umeyama_sim3(pred_centres, gt_centres, allow_collinear=True)
    except ValueError:
        # parity: the official code wraps the whole batch in one try, so one degenerate
        # batch item sends every item back to scale 1
        return torch.ones(pred_centres.shape[0], dtype=pred_centres.dtype, device=pred_centres.device)
    s = s.to(pred_centres)
    # parity: the official scale is clamped to [1/3, 3] (a guard against wild alignments)
    return torch.clamp(s, min=1 / 3.0, max=3.0)


class GaussianAdapter(nn.Module):
    """Raw GS-head output + depth + cameras -> per-pixel world-space Gaussians.

    Parameter-free.  Raw channel layout (37 for SH degree 2): 0-1 sub-pixel xy offset,
    2-4 scale logits, 5-8 quaternion, 9..9+3(L+1)^2-1 SH (colour-major: 3 colours x
    (L+1)^2 coefficients), last: depth offset.
    """

    sh_mask: Tensor

    def __init__(self, config: Optional[GaussianConfig] = None) -> None:
        super().__init__()
        self.config = config if config is not None else GaussianConfig()
        self.register_buffer("sh_mask", self._sh_mask(), persistent=False)

    def _sh_mask(self) -> Tensor:
        d = self.config.sh_degree
        # damps the view-dependent bands (0.1 * 0.25^l for l >= 1): the network was trained
        # with this prior on its SH output, so it is part of the parameterisation
        mask = torch.ones((d + 1) ** 2)
        for l in range(1, d + 1):
            mask[l * l : (l + 1) ** 2] = 0.1 * 0.25**l
        return mask

    def reset_buffers(self) -> None:
        """Rebuild the non-persistent buffer after the module was created on the meta device."""
        if self.sh_mask.is_meta:
            self.sh_mask = self._sh_mask()

    @property
    def sh_coeffs(self) -> int:
        return (self.config.sh_degree + 1) ** 2

    def forward(
        self,
        extrinsics: Tensor,
        intrinsics: Tensor,
        depths: Tensor,
        opacities: Tensor,
        raw: Tensor,
        gt_extrinsics: Optional[Tensor] = None,
    ) -> Gaussians:
        """
        Args:
            extrinsics: predicted world-to-camera (B, S, 4, 4) or (B, S, 3, 4).
            intrinsics: predicted K (B, S, 3, 3) in pixels of the H x W network input.
            depths: (B, S, H, W) predicted depth.
            opacities: (B, S, H, W) sigmoid confidence of the GS head.
            raw: (B, S, H, W, raw_channels) raw GS-head output.
            gt_extrinsics: optional given world-to-camera (B, S, 4, 4) / (B, S, 3, 4); only
                its scale relative to the prediction is used.

        Returns:
            :class:`Gaussians` flattened over (view, row, column); rotations are
            scalar-last quaternions with w >= 0.
        """
        cfg = self.config
        b, s, h, w = depths.shape
        if raw.shape != (b, s, h, w, cfg.raw_channels):
            raise ValueError(f"raw must be {(b, s, h, w, cfg.raw_channels)}, got {tuple(raw.shape)}")
        dtype, device = raw.dtype, raw.device
        ext = as_homogeneous(extrinsics).to(dtype)
        c2w = invert_rigid(ext)
        rot_c2w, centre = c2w[..., :3, :3], c2w[..., :3, 3]  # (B,S,3,3), (B,S,3)

        # K normalised to the unit image square (x / W, y / H)
        k_n = intrinsics.to(dtype).clone()
        k_n[..., 0, :] = k_n[..., 0, :] / w
        k_n[..., 1, :] = k_n[..., 1, :] / h

        dist = depths.to(dtype) + raw[..., -1]  # depth plus the predicted depth offset
        frame_scale = torch.ones(b, dtype=dtype, device=device)

        # given cameras: match their scale (not their frame: the Gaussians stay in the
        # predicted frame, where the depth lives)
        if gt_extrinsics is not None:
            gt = as_homogeneous(gt_extrinsics)
            # parity: alignment is skipped only when the given cameras are bit-identical
            # to the predicted ones
            if gt.shape != ext.shape or not torch.equal(gt.to(ext), ext):
                gt_centre = invert_rigid(gt.detach().double())[..., :3, 3]
                scale = _pose_scale(centre.detach().double(), gt_centre).to(dtype)
                centre = centre * scale[:, None, None]
                dist = dist * scale[:, None, None, None]
                frame_scale = scale

        # pixel centres at half-integer positions, normalised to (0, 1), plus the learned
        # sub-pixel offset (in pixels); parity: the network was trained on these centres
        cols = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        rows = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        px = cols.view(1, 1, 1, w) + raw[..., 0] / w
        py = rows.view(1, 1, h, 1) + raw[..., 1] / h

        # camera-frame ray through (px, py), normalised to unit length
        k_inv = torch.linalg.inv(k_n.float()).to(dtype)  # (B,S,3,3)
        pix = torch.stack((px, py, torch.ones_like(px)), -1)  # (B,S,H,W,3)
        ray = torch.einsum("bsij,bshwj->bshwi", k_inv, pix)
        ray = ray / ray.norm(dim=-1, keepdim=True)
        ray_world = torch.einsum("bsij,bshwj->bshwi", rot_c2w, ray)
        # parity quirk: the depth is used as a distance along the *unit* ray (range), not
        # as z-depth; the official network was trained with this placement
        means = centre[:, :, None, None, :] + ray_world * dist[..., None]

        # scales: bounded sigmoid, times distance and the footprint of a pixel (0.1 x the
        # sum of the two axes of K_n[:2,:2]^-1 applied to the pixel size), as trained
        lo, hi = cfg.scale_min, cfg.scale_max
        sigma = lo + (hi - lo) * torch.sigmoid(raw[..., 2:5])
        pixel = torch.tensor((1.0 / w, 1.0 / h), dtype=dtype, device=device)
        footprint = 0.1 * (torch.linalg.inv(k_n[..., :2, :2].float()).to(dtype) @ pixel).sum(-1)  # (B,S)
        scales = sigma * dist[..., None] * footprint[:, :, None, None, None]

        # rotations
        quat = raw[..., 5:9]
        quat = quat / (quat.norm(dim=-1, keepdim=True) + 1e-8)
        # parity quirk: the 4 raw numbers (q0..q3) go to a scalar-last (x, y, z, w)
        # quaternion-to-matrix as (q3, q0, q1, q2), i.e. x=q3, y=q0, z=q1, w=q2; the
        # network learnt its quaternion output under this (historical) reordering
        rot_cam = quat_xyzw_to_matrix(quat[..., [3, 0, 1, 2]])
        rot_world = rot_c2w[:, :, None, None] @ rot_cam
        # scalar-last (x, y, z, w) with w >= 0 -- the 4 numbers the official renderer and
        # PLY exporter consume as they are
        rotations = matrix_to_quat_xyzw(rot_world)

        # SH: colour-major (3, (L+1)^2), damped by the mask, rotated camera -> world
        sh = raw[..., 9 : 9 + 3 * self.sh_coeffs].unflatten(-1, (3, self.sh_coeffs))
        sh = sh * self.sh_mask.to(dtype)
        if cfg.sh_degree > 0:
            sh = rotate_sh(sh, rot_c2w[:, :, None, None, None])

        # parity: the official opacity mapping 0.5 (1 - (1 - p)^e + p^(1/e)) with e = 2^0 = 1
        # (its annealing schedule is off at inference); numerically p, written out so the
        # rounding matches
        p = opacities.to(dtype)
        opac = 0.5 * ((1.0 - (1.0 - p)) + p)

        n = s * h * w
        return Gaussians(
            means=means.reshape(b, n, 3),
            scales=scales.reshape(b, n, 3),
            rotations=rotations.reshape(b, n, 4),
            harmonics=sh.reshape(b, n, 3, self.sh_coeffs),
            opacities=opac.reshape(b, n),
            frame_scale=frame_scale,
        )
