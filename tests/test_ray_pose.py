"""Cameras from the ray map (core/model/ray_pose.py): parity with the official solver, exactness
on noise-free rays, RNG consumption, and input checks.

The ray maps are built from known cameras: for the cell (i, j) of an h x w map the pixel of
the H x W image is ((j + 0.5) W / w, (i + 0.5) H / h); its world direction R_c2w K^-1 p is
scaled by a random positive factor, perturbed, and some cells are replaced by outliers.
"""

from __future__ import annotations

import math

import pytest
import torch

from da3_plugins.core.model.ray_pose import rays_to_cameras
from helpers import assert_close, random_cameras

RANSAC_ITERS = 100


def official_ray_pose(ray, conf, image_size):
    """The official use_ray_pose path (as DepthAnything3Net._process_ray_pose_estimation)."""
    from depth_anything_3.utils.geometry import affine_inverse
    from depth_anything_3.utils.ray_utils import get_extrinsic_from_camray

    height, width = image_size
    # the official solver zeroes entries of the confidence it is given: hand it a copy
    c2w, focal, pp = get_extrinsic_from_camray(ray, conf.clone(), ray.shape[-3], ray.shape[-2])
    ext = affine_inverse(c2w)[:, :, :3]
    k = torch.eye(3).repeat(ext.shape[0], ext.shape[1], 1, 1)
    k[:, :, 0, 0] = focal[:, :, 0] / 2 * width
    k[:, :, 1, 1] = focal[:, :, 1] / 2 * height
    k[:, :, 0, 2] = pp[:, :, 0] * width * 0.5
    k[:, :, 1, 2] = pp[:, :, 1] * height * 0.5
    return ext, k


def small_rotations(count, max_angle, g):
    """Rotations about random axes by angles up to max_angle (cameras looking roughly along +z)."""
    axis = torch.randn(count, 3, generator=g)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    ang = max_angle * torch.rand(count, 1, generator=g)
    kx = torch.zeros(count, 3, 3)
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    kx = kx - kx.transpose(1, 2)
    s, c = ang.sin()[..., None], ang.cos()[..., None]
    return torch.eye(3) + s * kx + (1 - c) * kx @ kx


def make_rays(ext, k, h, w, image_size, seed, noise=0.0, outliers=0.0, origin_noise=0.0):
    """Ray map (B, S, h, w, 6) and confidence (B, S, h, w) of known w2c cameras ext / K."""
    b, s = ext.shape[:2]
    height, width = image_size
    g = torch.Generator().manual_seed(seed)
    c2w = torch.linalg.inv(ext)
    u = (torch.arange(w) + 0.5) * width / w
    v = (torch.arange(h) + 0.5) * height / h
    pix = torch.stack(torch.meshgrid(u, v, indexing="xy") + (torch.ones(h, w),), -1).to(k.dtype)
    cam = torch.einsum("bsij,hwj->bshwi", torch.linalg.inv(k), pix)
    d = torch.einsum("bsij,bshwj->bshwi", c2w[..., :3, :3], cam)
    d = d * (0.5 + torch.rand(b, s, h, w, 1, generator=g))
    d = d + noise * d.norm(dim=-1, keepdim=True) * torch.randn(d.shape, generator=g)
    frac = torch.as_tensor(outliers, dtype=torch.float32).reshape(1, -1, 1, 1)
    bad = torch.rand(b, s, h, w, generator=g) < frac
    d = torch.where(bad[..., None], torch.randn(d.shape, generator=g), d)
    o = c2w[:, :, None, None, :3, 3].expand(b, s, h, w, 3)
    o = o + origin_noise * torch.randn(o.shape, generator=g)
    conf = 1 + torch.exp(torch.randn(b, s, h, w, generator=g))
    return torch.cat((d, o), -1).float(), conf.float()


def run_both(ray, conf, image_size, seed=123):
    """Both solvers from the same global RNG state; also returns whether they left it equal."""
    conf_before = conf.clone()
    torch.manual_seed(seed)
    ext_ref, k_ref = official_ray_pose(ray, conf, image_size)
    state_ref = torch.get_rng_state()
    torch.manual_seed(seed)
    ext, k = rays_to_cameras(ray, conf, image_size)
    state = torch.get_rng_state()
    assert torch.equal(conf, conf_before), "rays_to_cameras modified the caller's ray_conf"
    return (ext, k), (ext_ref, k_ref), torch.equal(state, state_ref)


@pytest.mark.parametrize(
    "b,s,h,w,outliers",
    [(1, 2, 32, 48, 0.1), (1, 3, 32, 48, 0.1), (2, 3, 24, 40, (0.05, 0.3, 0.5))],
)
@pytest.mark.oracle
def test_parity_with_official(b, s, h, w, outliers):
    image_size = (14 * h // 8, 14 * w // 8)
    ext, k = random_cameras(b, s, *image_size, seed=h + s)
    ray, conf = make_rays(ext, k, h, w, image_size, seed=b + s, noise=0.01, outliers=outliers, origin_noise=0.01)
    (e, kk), (e_ref, k_ref), same_rng = run_both(ray, conf, image_size)
    assert e.dtype == kk.dtype == torch.float32
    assert_close(e, e_ref, "extrinsics")
    assert_close(kk, k_ref, "intrinsics")
    assert same_rng, "the global RNG was consumed differently from the official solver"


@pytest.mark.oracle
def test_parity_with_degenerate_directions():
    """Cells whose direction has |z| <= 1e-4 get weight 0, also for the centre average."""
    b, s, h, w = 1, 2, 32, 48
    image_size = (56, 84)
    ext, k = random_cameras(b, s, *image_size, seed=3)
    ray, conf = make_rays(ext, k, h, w, image_size, seed=4, noise=0.01, outliers=0.05)
    flat = ray.view(b * s, h * w, 6)
    cells = torch.arange(0, h * w, 7)
    flat[:, cells, 2] = torch.tensor([0.0, 5e-5, -1e-4])[torch.arange(cells.numel()) % 3]
    flat[:, cells, 3:] = 1e3  # garbage origins: must not move the centre
    (e, kk), (e_ref, k_ref), same_rng = run_both(ray, conf, image_size)
    assert_close(e, e_ref, "extrinsics")
    assert_close(kk, k_ref, "intrinsics")
    assert same_rng
    centre = -(e[..., :3, :3].transpose(-1, -2) @ e[..., :3, 3:])[..., 0]
    centre_true = torch.linalg.inv(ext)[..., :3, 3]
    assert (centre - centre_true).abs().max() < 1e-4


def _patched_svd(monkeypatch):
    """Make the oracle's big SVDs thin (numerically the same solution up to rounding).

    The official refit asks for the full U of a (2K x 9) matrix: with K = 8000 inliers that is
    a 16000 x 16000 float32 matrix (1 GB, seconds of CPU). The RNG draws and every other step
    of the oracle are untouched.
    """
    full_svd = torch.linalg.svd

    def svd(a, full_matrices=True, **kw):
        return full_svd(a, full_matrices=full_matrices and a.shape[-2] <= 4096, **kw)

    import depth_anything_3.utils.ray_utils as official

    monkeypatch.setattr(official.torch.linalg, "svd", svd)


@pytest.mark.oracle
def test_parity_refit_subsampling(monkeypatch):
    """>8000 inliers: the refit draws an extra randperm for that view only (view 1 here)."""
    b, s, h, w = 1, 2, 96, 96
    image_size = (168, 168)
    ext, k = random_cameras(b, s, *image_size, seed=7)
    ray, conf = make_rays(ext, k, h, w, image_size, seed=8, noise=0.005, outliers=(0.6, 0.02), origin_noise=0.01)
    _patched_svd(monkeypatch)
    (e, kk), (e_ref, k_ref), same_rng = run_both(ray, conf, image_size, seed=5)
    assert_close(e, e_ref, "extrinsics")
    assert_close(kk, k_ref, "intrinsics")
    assert same_rng
    # and the extra draw really happened: the state differs from "RANSAC table only"
    torch.manual_seed(5)
    for _ in range(RANSAC_ITERS):
        torch.randperm(int(0.3 * h * w))
    table_only = torch.get_rng_state()
    torch.manual_seed(5)
    rays_to_cameras(ray, conf, image_size)
    assert not torch.equal(torch.get_rng_state(), table_only)


def test_rng_draw_order():
    """Draws: 100 x randperm(max(8, int(0.3 h w))), then randperm(max(int(0.95 n), 8000)) per
    view (in b, s order) whose n inliers exceed 8000. Noise-free, near-frontal cameras make
    every cell an inlier, so n = h w is known."""
    b, s, h, w = 1, 2, 96, 90  # 8640 cells > 8000
    image_size = (168, 158)
    g = torch.Generator().manual_seed(11)
    ext = torch.eye(4).repeat(b, s, 1, 1)
    ext[..., :3, :3] = small_rotations(b * s, 0.3, g).reshape(b, s, 3, 3)
    ext[..., :3, 3] = torch.randn(b, s, 3, generator=g)
    _, k = random_cameras(b, s, *image_size, seed=12)
    ray, conf = make_rays(ext, k, h, w, image_size, seed=13)
    torch.manual_seed(0)
    rays_to_cameras(ray, conf, image_size)
    state = torch.get_rng_state()
    n = h * w
    torch.manual_seed(0)
    for _ in range(RANSAC_ITERS):
        torch.randperm(max(8, int(0.3 * n)))
    for _ in range(b * s):
        torch.randperm(max(int(0.95 * n), 8000))
    assert torch.equal(state, torch.get_rng_state())


def _rotation_angle(r):
    """Rotation angle of r (..., 3, 3), accurate for small angles."""
    skew = (r - r.transpose(-1, -2)).norm(dim=(-2, -1)) / math.sqrt(2)
    cos = (r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.atan2(skew, cos)


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_free_rays_recover_cameras(seed):
    b, s, h, w = 1, 3, 32, 48
    image_size = (56, 84)
    ext, k = random_cameras(b, s, *image_size, seed=seed)  # principal point at the centre, fx != fy
    ext, k = ext.double(), k.double()
    ray, conf = make_rays(ext, k, h, w, image_size, seed=seed + 100)
    torch.manual_seed(seed)
    e, kk = rays_to_cameras(ray, conf, image_size)
    e, kk = e.double(), kk.double()

    ang = _rotation_angle(e[..., :3, :3] @ ext[..., :3, :3].transpose(-1, -2))
    assert ang.max() < 1e-4, f"rotation error {ang.max():.3g} rad"
    centre = -(e[..., :3, :3].transpose(-1, -2) @ e[..., :3, 3:])[..., 0]
    centre_true = -(ext[..., :3, :3].transpose(-1, -2) @ ext[..., :3, 3:])[..., 0]
    rel = ((centre - centre_true).norm(dim=-1) / centre_true.norm(dim=-1)).max()
    assert rel < 1e-4, f"centre error {rel:.3g} (relative)"
    for i in (0, 1):
        rel_f = ((kk[..., i, i] - k[..., i, i]).abs() / k[..., i, i]).max()
        assert rel_f < 1e-4, f"focal {i} error {rel_f:.3g} (relative)"
    assert (kk[..., :2, 2] - k[..., :2, 2]).abs().max() < 1e-4 * max(image_size)
    assert torch.equal(kk[..., 2, :], torch.tensor([0.0, 0.0, 1.0], dtype=kk.dtype).expand(b, s, 3))
    # the 4th row is not returned; the rotation block is orthonormal
    assert e.shape == (b, s, 3, 4)
    eye = e[..., :3, :3] @ e[..., :3, :3].transpose(-1, -2)
    assert (eye - torch.eye(3, dtype=eye.dtype)).abs().max() < 1e-5


def test_low_precision_input_computes_in_float32():
    b, s, h, w = 1, 2, 16, 24
    image_size = (28, 42)
    ext, k = random_cameras(b, s, *image_size, seed=21)
    ray, conf = make_rays(ext, k, h, w, image_size, seed=22)
    torch.manual_seed(0)
    e, kk = rays_to_cameras(ray.half(), conf.half(), image_size)
    assert e.dtype == kk.dtype == torch.float32
    torch.manual_seed(0)
    e32, k32 = rays_to_cameras(ray.half().float(), conf.half().float(), image_size)
    assert torch.equal(e, e32) and torch.equal(kk, k32)


@pytest.mark.parametrize(
    "ray_shape,conf_shape,image_size,message",
    [
        ((1, 2, 8, 8), (1, 2, 8, 8), (14, 14), r"ray must be a \(B, S, h, w, 6\)"),
        ((1, 2, 8, 8, 7), (1, 2, 8, 8), (14, 14), r"ray must be a \(B, S, h, w, 6\)"),
        ((2, 8, 8, 6), (2, 8, 8), (14, 14), r"ray must be a \(B, S, h, w, 6\)"),
        ((1, 2, 8, 8, 6), (1, 2, 8, 9), (14, 14), r"ray_conf must have shape"),
        ((1, 2, 8, 8, 6), (1, 2, 8, 8, 1), (14, 14), r"ray_conf must have shape"),
        ((1, 2, 8, 8, 6), (1, 2, 8, 8), (14,), r"image_size must be \(H, W\)"),
        ((1, 2, 8, 8, 6), (1, 2, 8, 8), (0, 14), r"image_size must be positive"),
        ((1, 2, 2, 3, 6), (1, 2, 2, 3), (14, 14), r"too small"),
        ((1, 0, 8, 8, 6), (1, 0, 8, 8), (14, 14), r"no views"),
    ],
)
def test_bad_inputs_raise(ray_shape, conf_shape, image_size, message):
    with pytest.raises(ValueError, match=message):
        rays_to_cameras(torch.randn(ray_shape), torch.rand(conf_shape) + 1, image_size)
