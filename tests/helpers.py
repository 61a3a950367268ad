"""Shared test utilities: synthetic inputs and tolerance checks."""

from __future__ import annotations

import math

import torch


def assert_close(ours: torch.Tensor, ref: torch.Tensor, name: str, rel: float = 1e-4) -> float:
    """Max |ours - ref| within rel x the output scale (max(1, max |ref|)); shapes identical."""
    assert tuple(ours.shape) == tuple(ref.shape), f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    ours, ref = ours.double(), ref.double()
    assert torch.isfinite(ref).all(), f"{name}: the reference is not finite"
    scale = max(1.0, float(ref.abs().max()))
    diff = float((ours - ref).abs().max())
    assert diff <= rel * scale, f"{name}: max |diff| {diff:.3g} > {rel} x scale {scale:.3g}"
    return diff


def random_images(b: int, n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, 3, h, w, generator=g)


def random_rotations(count: int, g: torch.Generator) -> torch.Tensor:
    q = torch.randn(count, 4, generator=g)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ),
        -1,
    ).reshape(count, 3, 3)


def random_cameras(b: int, n: int, h: int, w: int, seed: int = 0):
    """World-to-camera (B, N, 4, 4) and K (B, N, 3, 3) in pixels of (h, w)."""
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(b * n, g).reshape(b, n, 3, 3)
    t = torch.randn(b, n, 3, generator=g)
    ext = torch.eye(4).repeat(b, n, 1, 1)
    ext[..., :3, :3] = rot
    ext[..., :3, 3] = t
    fov = math.radians(60) + 0.2 * torch.rand(b, n, generator=g)
    f = (w / 2) / torch.tan(fov / 2)
    k = torch.zeros(b, n, 3, 3)
    k[..., 0, 0] = f
    k[..., 1, 1] = f * (1 + 0.05 * torch.rand(b, n, generator=g))
    k[..., 0, 2], k[..., 1, 2], k[..., 2, 2] = w / 2, h / 2, 1
    return ext, k


def raises_naming(what, fn, *args, **kwargs) -> str:
    """fn(*args) raises a one-line ValueError that names ``what`` (a file, an argument)."""
    import pytest

    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert str(what) in msg, msg
    assert "\n" not in msg
    return msg


def failing_open(writes: int, error: BaseException):
    """A stand-in for ``open`` whose files accept ``writes`` calls of ``write``, then raise
    ``error`` (a disk that fills up, a write interrupted half-way)."""

    class FailingFile:
        def __init__(self, *args):
            self.fh, self.writes = open(*args), 0

        def write(self, data):
            self.writes += 1
            if self.writes > writes:
                raise error
            return self.fh.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    return FailingFile
