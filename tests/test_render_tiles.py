"""The tile-binned rasteriser against a dense reference (every pixel against every Gaussian, the
compositing rule core/render.py documents): values and gradients, for several tile sizes, step
sizes and batch sizes; early termination; empty views; finite differences across tiles and steps."""

from __future__ import annotations

import math

import pytest
import torch

from da3_plugins.core import render
from da3_plugins.core.render import ALPHA_MAX, ALPHA_MIN, T_MIN, project, rasterize, sh_colors


def dense_reference(means, quats, scales, opacities, colors, viewmat, k, width, height, background=None):
    """No tiles, no binning: an (H W) x G matrix per quantity, Gaussians sorted by depth."""
    dtype = means.dtype
    if background is None:
        background = torch.zeros(3, dtype=dtype)
    m2, cov, depth, valid = project(means, quats, scales, viewmat, k, width, height)
    if colors.dim() == 3:
        colors = sh_colors(colors, means, -(viewmat[:3, :3].T @ viewmat[:3, 3]))
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
    idx = torch.nonzero(valid & (det > 0))[:, 0]
    idx = idx[torch.argsort(depth.detach()[idx], stable=True)]
    a, b, c = (cov[idx, 1, 1] / det[idx], -cov[idx, 0, 1] / det[idx], cov[idx, 0, 0] / det[idx])
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype) + 0.5, torch.arange(width, dtype=dtype) + 0.5,
                            indexing="ij")
    dx = xs.reshape(-1, 1) - m2[idx, 0]
    dy = ys.reshape(-1, 1) - m2[idx, 1]
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = (opacities[idx] * torch.exp(power)).clamp(max=ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    w = torch.where(trans >= T_MIN, alpha * trans, torch.zeros_like(alpha))
    acc = w.sum(1)
    rgb = w @ colors[idx] + (1 - acc)[:, None] * background
    d = (w @ depth[idx]) / acc.clamp(min=1e-10)
    d = torch.where(acc > 0, d, torch.zeros_like(d))
    return rgb.reshape(height, width, 3), acc.reshape(height, width), d.reshape(height, width)


def random_scene(g=100, width=37, height=29, seed=0, sh=True, dtype=torch.float64):
    """Gaussians in front of, beside and behind a camera, 1 to 20 px wide, deep enough that pixels
    stop (T < T_MIN); a few opaque enough to hit the 0.99 clamp."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand(g, generator=gen, dtype=dtype) * 4 + 1.5
    z[:3] = torch.tensor([-1.0, 0.005, 0.3], dtype=dtype)  # behind, at the near plane, very close
    xy = (torch.rand(g, 2, generator=gen, dtype=dtype) - 0.5) * z[:, None] * 1.3
    means = torch.cat([xy, z[:, None]], 1)
    if g >= 6:
        means[3:6] = torch.tensor([[-0.1, 0.0, 3.0], [-0.4, 0.2, 4.0], [-0.3, 0.1, 2.5]], dtype=dtype)
    quats = torch.randn(g, 4, generator=gen, dtype=dtype)
    scales = torch.exp(torch.rand(g, 3, generator=gen, dtype=dtype) * 2 - 2.5)  # 0.08 .. 0.6
    opac = torch.rand(g, generator=gen, dtype=dtype) * 0.38 + 0.6
    if g >= 6:
        opac[3:6] = torch.tensor([1.0, 0.995, 0.001], dtype=dtype)
    colors = torch.randn(g, 3, 4, generator=gen, dtype=dtype) * 0.3 if sh else torch.rand(g, 3, generator=gen,
                                                                                             dtype=dtype)
    f = 0.9 * width
    k = torch.tensor([[f, 0, width / 2 + 0.3], [0, f * 1.05, height / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    vm = torch.eye(4, dtype=dtype)
    ang = 0.1
    vm[:3, :3] = torch.tensor([[math.cos(ang), 0, math.sin(ang)], [0, 1, 0], [-math.sin(ang), 0, math.cos(ang)]],
                              dtype=dtype)
    vm[:3, 3] = torch.tensor([0.05, -0.1, 0.2], dtype=dtype)
    bg = torch.tensor([0.2, 0.5, 0.9], dtype=dtype)
    return [means, quats, scales, opac, colors, vm, k, width, height, bg]


CONFIGS = {  # (TILE, CHUNK, BLOCK, SMALL)
    "default": (render.TILE, render.CHUNK, render.BLOCK, render.SMALL),
    "16px-tiles-5-per-step": (16, 5, 1 << 20, render.SMALL),
    "4px-tiles-3-per-step-4-tile-batches": (4, 3, 4 * 16 * 3, render.SMALL),
    "matrix-products-always": (8, 7, 8 * 64 * 7, 0),
}


@pytest.fixture(params=list(CONFIGS))
def config(request, monkeypatch):
    for name, value in zip(("TILE", "CHUNK", "BLOCK", "SMALL"), CONFIGS[request.param]):
        monkeypatch.setattr(render, name, value)
    return request.param


def _outputs(out):
    return out.rgb, out.alpha, out.depth


def test_matches_dense_reference_values_and_gradients(config):
    scene = random_scene()
    floats = [0, 1, 2, 3, 4, 5, 9]  # means, quats, scales, opacities, SH, viewmat, background
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((29, 37, 3), (29, 37), (29, 37))]
    grads = []
    for fn in (rasterize, dense_reference):
        args = [a.detach().clone().requires_grad_() if i in floats else a for i, a in enumerate(scene)]
        with torch.enable_grad():
            outs = fn(*args)
            outs = _outputs(outs) if fn is rasterize else outs
            loss = sum((o * w).sum() for o, w in zip(outs, weights))
            grads.append(torch.autograd.grad(loss, [args[i] for i in floats]))
        if fn is rasterize:
            ours = [o.detach() for o in outs]
        else:
            ref = [o.detach() for o in outs]
    assert 0.01 < (ref[1] > 1 - T_MIN).double().mean() < 0.5  # some pixels stopped, most did not
    for name, a, b in zip(("rgb", "alpha", "depth"), ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "sh", "viewmat", "background"), *grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=name)


def test_image_independent_of_tiling(monkeypatch):
    scene = random_scene(g=200, width=61, height=45, seed=3, sh=False)
    images = []
    for cfg in CONFIGS.values():
        for name, value in zip(("TILE", "CHUNK", "BLOCK", "SMALL"), cfg):
            monkeypatch.setattr(render, name, value)
        images.append(torch.cat([o.reshape(45, 61, -1) for o in _outputs(rasterize(*scene))], -1))
    for img in images[1:]:
        torch.testing.assert_close(img, images[0], rtol=0, atol=1e-12)


def test_early_termination_behind_opaque_stack():
    """40 Gaussians on one line of sight: the pixel stops once T < T_MIN, the rest is not drawn."""
    g = 40
    means = torch.zeros(g, 3, dtype=torch.float64)
    means[:, 2] = torch.linspace(2.0, 6.0, g, dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * g, dtype=torch.float64)
    scales = torch.full((g, 3), 0.3, dtype=torch.float64)
    opac = torch.full((g,), 0.8, dtype=torch.float64)
    colors = torch.zeros(g, 3, dtype=torch.float64)
    colors[:4, 0] = 1.0  # red in front, green behind
    colors[4:, 1] = 1.0
    k = torch.tensor([[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]], dtype=torch.float64)  # axis through pixel (8, 8)
    vm = torch.eye(4, dtype=torch.float64)
    out = rasterize(means, quats, scales, opac, colors, vm, k, 16, 16)
    rgb, acc, depth = dense_reference(means, quats, scales, opac, colors, vm, k, 16, 16)
    torch.testing.assert_close(out.rgb, rgb, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.depth, depth, rtol=0, atol=1e-12)
    # on the axis alpha = 0.8 for all: T = 0.2^i, drawn while T >= 1e-4, i.e. i <= 5
    assert out.alpha[8, 8].item() == pytest.approx(1 - 0.2**6, abs=1e-12)
    assert out.rgb[8, 8, 1].item() == pytest.approx(0.8 * (0.2**4 + 0.2**5), abs=1e-12)


def test_nothing_visible_gives_background_and_zero_gradients():
    scene = random_scene(g=5)
    scene[0] = scene[0].clone()
    scene[0][:, 2] = -2.0  # all behind the camera
    means = scene[0].requires_grad_()
    with torch.enable_grad():
        out = rasterize(*scene)
        (out.rgb.sum() + out.alpha.sum() + out.depth.sum()).backward()
    assert (out.rgb == scene[9]).all() and (out.alpha == 0).all() and (out.depth == 0).all()
    assert (means.grad == 0).all()
    empty = rasterize(*[a[:0] if i < 5 else a for i, a in enumerate(scene)])
    assert (empty.rgb == scene[9]).all()


def test_zero_opacity_gives_finite_gradients():
    scene = random_scene(g=20, seed=6, sh=False)
    opac = scene[3].clone()
    opac[::2] = 0.0
    opac.requires_grad_()
    with torch.enable_grad():
        out = rasterize(*scene[:3], opac, *scene[4:])
        out.rgb.sum().backward()
    assert torch.isfinite(opac.grad).all() and (opac.grad[::2] == 0).all() and (opac.grad[1::2] != 0).any()


def test_float32_matches_float64():
    scene = random_scene(g=150, width=50, height=40, seed=4)
    ref = _outputs(rasterize(*scene))
    ours = _outputs(rasterize(*[a.float() if isinstance(a, torch.Tensor) else a for a in scene]))
    for a, b in zip(ours, ref):
        assert (a.double() - b).abs().max() < 2e-4


def test_gradients_by_finite_differences_across_tiles_and_steps(monkeypatch):
    """Gaussians straddling 4 px tiles, 2 per step: every input's gradient, the camera's too."""
    monkeypatch.setattr(render, "TILE", 4)
    monkeypatch.setattr(render, "CHUNK", 2)
    monkeypatch.setattr(render, "BLOCK", 2 * 16 * 2)
    scene = random_scene(g=5, width=11, height=9, seed=7, sh=False)
    scene[0] = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.1, 3.5], [-0.2, 0.2, 2.5], [0.1, -0.3, 4.0],
                             [0.0, 0.1, 3.2]], dtype=torch.float64)
    scene[2] = torch.full((5, 3), 0.25, dtype=torch.float64)
    scene[3] = torch.tensor([0.5, 0.7, 0.4, 0.8, 0.6], dtype=torch.float64)
    mix = torch.randn(12, 9 * 11 * 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in (0, 1, 2, 3, 4, 5, 9):
        def f(x, i=i):  # 12 random mixtures of all outputs (fewer backward passes than 495 outputs)
            a = list(scene)
            a[i] = x
            return mix @ torch.cat([o.reshape(9, 11, -1) for o in _outputs(rasterize(*a))], -1).reshape(-1)

        with torch.enable_grad():
            assert torch.autograd.gradcheck(f, (scene[i].detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


def test_projection_matches_the_matrix_form():
    """project() writes J W R S S^T R^T W^T J^T out per Gaussian: the same as the matrix products."""
    from da3_plugins.core.model.rotation import quat_wxyz_to_matrix

    means, quats, scales, _, _, vm, k, w, h, _ = random_scene(g=50, seed=9)
    means2d, cov2d, depth, valid = project(means, quats, scales, vm, k, w, h)
    r = vm[:3, :3]
    cam = means @ r.T + vm[:3, 3]
    m = quat_wxyz_to_matrix(quats) * scales[:, None, :]
    cov = r @ (m @ m.transpose(-1, -2)) @ r.T
    z = cam[:, 2].clamp(min=0.01)
    fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
    ux = (cam[:, 0] / z).clamp(-(cx / fx + 0.15 * w / fx), (w - cx) / fx + 0.15 * w / fx)
    uy = (cam[:, 1] / z).clamp(-(cy / fy + 0.15 * h / fy), (h - cy) / fy + 0.15 * h / fy)
    zero = torch.zeros_like(z)
    jac = torch.stack([fx / z, zero, -fx * ux / z, zero, fy / z, -fy * uy / z], -1).reshape(-1, 2, 3)
    torch.testing.assert_close(cov2d, jac @ cov @ jac.transpose(-1, -2) + 0.3 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(means2d, torch.stack([fx * cam[:, 0] / z + cx, fy * cam[:, 1] / z + cy], -1))
    torch.testing.assert_close(depth, cam[:, 2])
    assert torch.equal(valid, depth > 0.01)
