"""Cameras from the any-view ray map (the ``use_ray_pose`` path).

The ray head predicts, for every cell of an h x w grid, a world-frame ray direction
(channels 0-2) and the ray origin, i.e. the camera centre (channels 3-5), plus a confidence.
A pinhole camera maps the homogeneous image point of each cell to its world direction by
d ~ R_c2w K^-1 p, a 3x3 homography.  We fit that homography robustly (weighted DLT inside
RANSAC), split it into a rotation and a lower-triangular factor (QL), read focal
and principal point off the factor, and average the origins for the centre.

Everything below is written to agree with the official implementation to float32 rounding,
including its random-number consumption, so that a seeded run gives the same cameras.
Deliberately preserved quirks are marked "quirk:".
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

from .camera import invert_rigid

_Z_EPS = 1e-4           # directions with |z| at or below this are not normalised and get weight 0
_REPROJ_THRESHOLD = 0.2  # RANSAC inlier distance, in the normalised plane (the image spans [-1, 1])
_RANSAC_ITERS = 100
_MIN_SET = 8            # points per RANSAC hypothesis
_CANDIDATE_RATIO = 0.3  # hypotheses are drawn from this fraction of the highest-weight points
_REFIT_CAP = 8000       # the final fit uses at most this many inliers
_REFIT_KEEP = 0.95      # ... drawn from this top-weight fraction when the cap bites


def _reference_plane(h: int, w: int, device) -> Tensor:
    """(h*w, 2) cell centres of a virtual 2x2 image seen by a camera with f = 1, c = (1, 1).

    The centres are laid out as a float32 ``linspace`` over (0, 2) and then shifted by the
    principal point; building them this way (rather than as (2j+1)/w - 1 directly) keeps the
    values bit-identical to the official grid.
    """
    half_x, half_y = 1.0 / w, 1.0 / h
    xs = torch.linspace(half_x, 2.0 - half_x, w, dtype=torch.float32, device=device) - 1.0
    ys = torch.linspace(half_y, 2.0 - half_y, h, dtype=torch.float32, device=device) - 1.0
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (h, w, 2), x fastest
    return grid.reshape(h * w, 2)


def _weighted_dlt(src: Tensor, dst: Tensor, weight: Tensor, full_svd: bool) -> Tensor:
    """Homographies H with dst ~ H src, batched: src/dst (..., K, 2), weight (..., K) -> (..., 3, 3).

    Each correspondence contributes two rows scaled by sqrt(weight); the solution is the right
    singular vector of the smallest singular value, scaled so that H[2, 2] = 1.  The rows are
    ordered [all x-equations ; all y-equations], as upstream, so that the SVD sees the same matrix.
    ``full_svd`` asks LAPACK for the full U as upstream does; the thin SVD gives the same
    solution up to float rounding (it is used for the big refit, where the full U would be
    a (2K)^2 matrix -- about 1 GB for K = 8000).
    """
    sw = weight.sqrt()[..., None]
    x, y = src[..., 0:1], src[..., 1:2]
    zero = torch.zeros_like(x)
    rows = []
    for k, t in enumerate((dst[..., 0:1], dst[..., 1:2])):
        # t = (h_k . p) / (h_3 . p)  <=>  -h_k . p + t (h_3 . p) = 0, times sqrt(weight)
        own = [-x * sw, -y * sw, -sw]
        other = [zero, zero, zero]
        blocks = own + other if k == 0 else other + own
        rows.append(torch.cat(blocks + [x * t * sw, y * t * sw, t * sw], -1))
    design = torch.cat(rows, -2)  # (..., 2K, 9)
    vh = torch.linalg.svd(design, full_matrices=full_svd).Vh
    hom = vh[..., -1, :].reshape(*vh.shape[:-2], 3, 3)
    return hom / hom[..., 2:3, 2:3]


def _ransac_inliers(plane: Tensor, dst: Tensor, weight: Tensor, draws: Tensor, n_cand: int) -> Tensor:
    """Inlier masks (V, N) of the best hypothesis per view.

    plane (N, 2), dst (V, N, 2), weight (V, N), draws (iters, 8) indices into the candidates.
    All views share the same index table (one draw for the whole call, see rays_to_cameras).
    """
    n_views, n_pts = weight.shape
    cand = torch.argsort(weight, dim=1, descending=True)[:, :n_cand]  # (V, n_cand)
    picks = cand[:, draws]  # (V, iters, 8) point indices
    src_s = plane[picks]  # (V, iters, 8, 2)
    dst_s = torch.gather(dst, 1, picks.reshape(n_views, -1, 1).expand(-1, -1, 2)).reshape(src_s.shape)
    w_s = torch.gather(weight, 1, picks.reshape(n_views, -1)).reshape(picks.shape)
    hyps = _weighted_dlt(src_s, dst_s, w_s, full_svd=True)  # (V, iters, 3, 3)

    plane_h = torch.cat((plane, torch.ones_like(plane[:, :1])), -1)  # (N, 3)
    iters = hyps.shape[1]
    proj = torch.bmm(
        plane_h.expand(n_views * iters, n_pts, 3), hyps.reshape(-1, 3, 3).transpose(1, 2)
    ).reshape(n_views, iters, n_pts, 3)
    # quirk: a Euclidean distance with an explicit sqrt (not a squared test) -- kept so that
    # points right at the threshold fall on the same side as upstream
    err = ((proj[..., :2] / proj[..., 2:3] - dst[:, None]) ** 2).sum(-1).sqrt()
    inlier = err < _REPROJ_THRESHOLD  # NaN/inf errors (points sent to infinity) are outliers
    score = (inlier * weight[:, None]).sum(-1)  # (V, iters): summed inlier weight
    best = torch.argmax(score, dim=1)  # first maximum on ties
    return inlier[torch.arange(n_views, device=best.device), best]


def _refit(plane: Tensor, dst: Tensor, weight: Tensor) -> Tensor:
    """Weighted DLT on one view's inliers: plane/dst (K, 2), weight (K,) -> (3, 3).

    The inliers are put in descending-weight order first (upstream does; the row order changes
    the SVD only at rounding level, but we keep it for agreement).  Beyond the cap, the
    strongest 95% (at least the cap) are kept and a uniformly random subset of cap points is
    taken from them with ``torch.randperm`` on the global RNG.
    """
    n = weight.shape[0]
    if n < 4:
        raise ValueError(
            f"ray pose: the best RANSAC hypothesis has only {n} inlier(s); at least 4 are needed "
            "for the homography refit (is the ray map or its confidence degenerate?)"
        )
    order = torch.argsort(weight, descending=True)
    if n > _REFIT_CAP:
        keep = max(int(n * _REFIT_KEEP), _REFIT_CAP)
        order = order[:keep][torch.randperm(keep, device=weight.device)[:_REFIT_CAP]]
    return _weighted_dlt(plane[order], dst[order], weight[order], full_svd=False)


def _ql(mat: Tensor) -> Tuple[Tensor, Tensor]:
    """Batched QL (mat = Q L, L lower-triangular with positive diagonal) via QR of the column-reversed matrix.

    With J the anti-identity, QR(mat J) = Q' R' gives mat = (Q' J)(J R' J), and J R' J is lower
    triangular.  Signs are then made positive on diag(L).  quirk: torch.sign of an exactly zero
    diagonal entry is 0, which zeroes that column of Q and row of L, as upstream.
    """
    q_r, r_r = torch.linalg.qr(mat.flip(-1))
    q = q_r.flip(-1)
    low = r_r.flip(-1).flip(-2)
    sign = torch.sign(torch.diagonal(low, dim1=-2, dim2=-1))
    return q * sign[..., None, :], low * sign[..., :, None]


def _check_inputs(ray, ray_conf, image_size) -> Tuple[int, int]:
    if not isinstance(ray, Tensor) or ray.ndim != 5 or ray.shape[-1] != 6:
        shape = tuple(ray.shape) if isinstance(ray, Tensor) else type(ray).__name__
        raise ValueError(f"ray must be a (B, S, h, w, 6) tensor, got {shape}")
    if not isinstance(ray_conf, Tensor) or tuple(ray_conf.shape) != tuple(ray.shape[:4]):
        shape = tuple(ray_conf.shape) if isinstance(ray_conf, Tensor) else type(ray_conf).__name__
        raise ValueError(f"ray_conf must have shape (B, S, h, w) = {tuple(ray.shape[:4])}, got {shape}")
    b, s, h, w, _ = ray.shape
    if b * s == 0:
        raise ValueError(f"ray has no views: shape {tuple(ray.shape)}")
    if h * w < _MIN_SET:
        raise ValueError(f"ray map of {h}x{w} cells is too small: RANSAC needs at least {_MIN_SET} cells")
    if not isinstance(image_size, Sequence) or len(image_size) != 2:
        raise ValueError(f"image_size must be (H, W), got {image_size!r}")
    height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return height, width


def rays_to_cameras(ray: Tensor, ray_conf: Tensor, image_size) -> Tuple[Tensor, Tensor]:
    """World-to-camera extrinsics (B, S, 3, 4) and intrinsics (B, S, 3, 3) from a ray map.

    ray: (B, S, h, w, 6), channels 0-2 the world-frame ray direction, 3-5 the ray origin
    (camera centre); ray_conf: (B, S, h, w) positive weights; image_size: (H, W) of the
    network input, the frame of the returned intrinsics.  Computed in float32 without
    gradients.  Not deterministic: it consumes the global torch RNG (of ray's device) --

      1. 100 x ``torch.randperm(n_cand)`` (each truncated to 8), once per call, shared by
         every view, where n_cand = max(8, int(0.3 h w));
      2. then, for each view in (b, s) order whose best inlier set exceeds 8000 points,
         one ``torch.randperm(keep)`` with keep = max(int(0.95 n_inliers), 8000)

    -- the same draws, in the same order, as the official code, so equal seeds give equal
    results.  (Upstream fits the views in chunks of two, but the chunking neither adds draws
    nor reorders them, so we fit all views of the call together.)  The only numerical
    difference from upstream is the thin SVD of the final refit (see _weighted_dlt): results
    agree to float32 rounding, not bit for bit.

    Raises ValueError for malformed inputs, and (like upstream) when a view's best RANSAC
    hypothesis has fewer than 4 inliers -- e.g. a ray map that is not close to any pinhole
    camera, such as the output of a randomly initialised network.
    """
    height, width = _check_inputs(ray, ray_conf, image_size)
    b, s, h, w, _ = ray.shape
    n_views, n_pts = b * s, h * w
    device = ray.device
    ray = ray.detach().float().reshape(n_views, n_pts, 6)
    # our own copy: upstream zeroes the caller's confidence in place (see below)
    weight = ray_conf.detach().float().reshape(n_views, n_pts).clone()
    dirs, origins = ray[..., :3], ray[..., 3:]

    # Perspective-normalise the directions.  The plane points have z = 1, so only the ray
    # side can fail the test.  quirk: failing points keep their raw x, y (they still take part
    # in the inlier tests) but get weight 0 -- and that zeroed weight is also the one used for
    # the camera centre below (upstream writes the zeros into the confidence tensor itself).
    z = dirs[..., 2:3]
    ok = z.abs() > _Z_EPS
    dst = torch.where(ok, dirs[..., :2] / z, dirs[..., :2])
    weight = weight.masked_fill(~ok[..., 0], 0.0)
    plane = _reference_plane(h, w, device)

    # RNG draw 1: the hypothesis index table, 100 separate randperm calls (one call per row,
    # full permutation then truncation -- that is what fixes the RNG consumption).
    n_cand = max(_MIN_SET, int(n_pts * _CANDIDATE_RATIO))
    draws = torch.stack([torch.randperm(n_cand, device=device)[:_MIN_SET] for _ in range(_RANSAC_ITERS)])
    inliers = _ransac_inliers(plane, dst, weight, draws, n_cand)

    # RNG draw 2 (conditional, per view in order): inside _refit.
    hom = torch.stack([_refit(plane[m], dst[v][m], weight[v][m]) for v, m in enumerate(inliers)])
    # the homography is defined up to scale; pick the sign with det > 0 so that the QL
    # rotation is proper
    hom = torch.where((torch.linalg.det(hom) < 0)[:, None, None], -hom, hom)

    # hom ~ R_c2w K^-1 (K in the 2x2 frame, shifted to a centred principal point): QL splits
    # it into the rotation and a lower-triangular factor.  quirk: K^-1 is really upper
    # triangular, so the factor equals K^-1 only when the principal point is at the centre
    # (then it is diagonal).  Off centre, the rotation absorbs part of the offset and the
    # bottom row of the lower factor (read here as the principal point) is not the true one
    # (e.g. a 5% horizontal offset gives a ~0.13 rad rotation error and a principal point on
    # the wrong side of the centre).  Kept: it is what the official path returns.
    rot, low = _ql(hom)
    low = low / low[:, 2:3, 2:3]
    focal = 1.0 / torch.stack((low[:, 0, 0], low[:, 1, 1]), -1)  # in units of half the image
    pp = torch.stack((low[:, 2, 0], low[:, 2, 1]), -1) + 1.0  # in the [0, 2] frame

    # camera centre: confidence-weighted mean of the origins (with the zeroed weights)
    centre = (origins * weight[..., None]).sum(1) / weight.sum(-1, keepdim=True)

    extrinsics = invert_rigid(torch.cat((rot, centre[..., None]), -1))  # c2w -> w2c
    intrinsics = torch.zeros(n_views, 3, 3, dtype=torch.float32, device=device)
    intrinsics[:, 0, 0] = focal[:, 0] / 2 * width
    intrinsics[:, 1, 1] = focal[:, 1] / 2 * height
    intrinsics[:, 0, 2] = pp[:, 0] * width * 0.5
    intrinsics[:, 1, 2] = pp[:, 1] * height * 0.5
    intrinsics[:, 2, 2] = 1.0
    return extrinsics.reshape(b, s, 3, 4), intrinsics.reshape(b, s, 3, 3)
