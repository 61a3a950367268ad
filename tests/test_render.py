"""The pure-PyTorch Gaussian rasteriser: hand-computed cases, gradients by finite differences,
and gsplat's own torch helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from da3_plugins.core.render import project, rasterize


def _cam(w=32, h=24, f=40.0, dtype=torch.float64):
    k = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=dtype)
    return torch.eye(4, dtype=dtype), k


def test_single_gaussian_footprint_and_colour():
    vm, k = _cam()
    k[0, 2], k[1, 2] = 16.5, 12.5  # the optical axis through the centre of pixel (16, 12)
    mean = torch.tensor([[0.0, 0.0, 5.0]], dtype=torch.float64)
    s = 0.1
    out = rasterize(mean, torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64), torch.full((1, 3), s, dtype=torch.float64),
                    torch.tensor([0.7], dtype=torch.float64), torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64),
                    vm, k, 32, 24, background=torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    np.testing.assert_allclose(out.rgb[12, 16].numpy(), [0.7, 0.35, 0.3], atol=1e-9)
    # two pixels to the right: alpha = 0.7 exp(-d^2 / (2 sigma2d^2)), sigma2d^2 = (f s / z)^2 + 0.3
    var = (40 * s / 5.0) ** 2 + 0.3
    a = 0.7 * math.exp(-0.5 * 4 / var)
    np.testing.assert_allclose(out.rgb[12, 18].numpy(), [a, 0.5 * a, 1 - a], atol=1e-9)
    assert out.alpha[12, 16].item() == pytest.approx(0.7) and out.depth[12, 16].item() == pytest.approx(5.0)
    assert out.alpha[0, 0].item() == 0 and out.rgb[0, 0].tolist() == [0, 0, 1]


def test_depth_ordering():
    vm, k = _cam()
    means = torch.tensor([[0.0, 0, 8.0], [0.0, 0, 4.0]], dtype=torch.float64)  # green behind, red in front
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=torch.float64), torch.full((2, 3), 0.5, dtype=torch.float64),
                    torch.tensor([0.8, 0.8], dtype=torch.float64), torch.tensor([[0, 1.0, 0], [1.0, 0, 0]], dtype=torch.float64),
                    vm, k, 32, 24)
    r, g, _ = out.rgb[11, 15].tolist()  # near the centre: both nearly fully opaque there
    assert r > 0.75 and g < 0.2 and r + g == pytest.approx(out.alpha[11, 15].item(), abs=1e-9)


def test_gradients_by_finite_differences():
    vm, k = _cam(w=10, h=8, f=12.0)
    torch.manual_seed(0)
    means = (torch.randn(3, 3, dtype=torch.float64) * 0.2 + torch.tensor([0, 0, 3.0], dtype=torch.float64)).requires_grad_()
    quats = torch.randn(3, 4, dtype=torch.float64).requires_grad_()
    scales = (torch.rand(3, 3, dtype=torch.float64) * 0.2 + 0.15).requires_grad_()
    opac = (torch.rand(3, dtype=torch.float64) * 0.5 + 0.3).requires_grad_()
    cols = torch.rand(3, 3, dtype=torch.float64).requires_grad_()

    args = [means, quats, scales, opac, cols]
    for i in range(len(args)):  # each input's gradient against finite differences
        def f(x, i=i):
            a = [t.detach() for t in args]
            a[i] = x
            return rasterize(*a, vm, k, 10, 8).rgb

        with torch.enable_grad():  # the test suite runs under no_grad (conftest)
            assert torch.autograd.gradcheck(f, (args[i].detach().clone().requires_grad_(),), eps=1e-6, atol=1e-5)


def test_projection_matches_gsplat_torch_helpers():
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    torch.manual_seed(1)
    g = 50
    means = torch.randn(g, 3) * 0.5 + torch.tensor([0, 0, 4.0])
    quats = torch.randn(g, 4)
    scales = torch.rand(g, 3) * 0.1 + 0.01
    vm, k = _cam(w=64, h=48, f=60.0, dtype=torch.float32)
    vm[:3, 3] = torch.tensor([0.1, -0.2, 0.3])
    means2d, cov2d, depth, valid = project(means, quats, scales, vm, k, 64, 48)
    covars, _ = impl._quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, m2, d, conics, _ = impl._fully_fused_projection(means, covars, vm[None], k[None], 64, 48)
    torch.testing.assert_close(means2d, m2[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(depth, d[0])
    det = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] ** 2
    ours = torch.stack([cov2d[:, 1, 1] / det, -cov2d[:, 0, 1] / det, cov2d[:, 0, 0] / det], -1)
    torch.testing.assert_close(ours, conics[0], rtol=1e-4, atol=1e-5)
