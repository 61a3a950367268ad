"""What only a CUDA GPU can check: the official precision policy running for real, and the
rasteriser and the network on the GPU against the CPU.  Marked ``gpu``: skipped where torch sees
no CUDA device (as on the project's own machines); ``make test`` runs them on a CUDA machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from da3_plugins.core import random_model
from da3_plugins.core.precision import decide_auto, model_precision, set_precision
from da3_plugins.core.render import rasterize

pytestmark = pytest.mark.gpu


def test_auto_is_the_official_policy_on_this_gpu():
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert decide_auto("cuda").precision == expected
    model = random_model("da3-tiny", device="cuda")
    assert set_precision(model, "auto") == expected == model_precision(model)


def test_network_on_the_gpu_matches_the_cpu():
    x = torch.rand(1, 3, 3, 112, 154, generator=torch.Generator().manual_seed(0))
    cpu = random_model("da3-tiny")
    gpu = random_model("da3-tiny", device="cuda")
    ref = cpu.net(x)
    set_precision(gpu, "fp32")
    exact = gpu.net(x.cuda())
    assert torch.allclose(exact.depth.cpu(), ref.depth, rtol=1e-3, atol=1e-4)
    set_precision(gpu, "auto")  # the backbone under bf16 / fp16 autocast, the heads in fp32
    fast = gpu.net(x.cuda())
    assert fast.depth.dtype == torch.float32
    rel = ((fast.depth.cpu() - ref.depth).abs() / ref.depth.abs().clamp(min=1e-6)).median()
    assert float(rel) < 2e-2


def test_rasteriser_on_the_gpu_matches_the_cpu():
    g = torch.Generator().manual_seed(0)
    n, w, h = 5000, 96, 72
    means = torch.randn(n, 3, generator=g) * torch.tensor([1.0, 0.8, 0.5]) + torch.tensor([0.0, 0.0, 4.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.05 + 0.01
    opac = torch.rand(n, generator=g) * 0.9 + 0.05
    cols = torch.rand(n, 3, generator=g)
    k = torch.tensor([[80.0, 0, w / 2], [0, 80.0, h / 2], [0, 0, 1]])
    vm = torch.eye(4)

    def run(device):
        args = [t.to(device).requires_grad_() for t in (means, quats, scales, opac, cols)]
        with torch.enable_grad():
            out = rasterize(*args, vm.to(device), k.to(device), w, h)
            out.rgb.square().mean().backward()
        return out.rgb.detach().cpu(), [a.grad.cpu() for a in args]

    rgb_cpu, grads_cpu = run("cpu")
    rgb_gpu, grads_gpu = run("cuda")
    assert float((rgb_cpu - rgb_gpu).abs().mean()) < 1e-5
    for a, b in zip(grads_cpu, grads_gpu):
        cos = float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-30))
        assert cos > 0.9999
    assert np.isfinite(rgb_gpu.numpy()).all()
