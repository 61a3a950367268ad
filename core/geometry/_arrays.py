"""Array plumbing shared by the geometry modules: numpy in, numpy (or torch, like the input) out."""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # numpy array, torch tensor, or anything np.asarray takes


def is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def as_numpy(x: ArrayLike, name: str, dtype=np.float64) -> np.ndarray:
    """numpy view/copy of an array-like or torch tensor (detached, on the CPU)."""
    if is_torch(x):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None


def like(out: np.ndarray, ref: Any) -> Any:
    """Return ``out`` as a torch tensor on ``ref``'s device if ``ref`` is one, else as is."""
    if is_torch(ref):
        import torch

        dtype = ref.dtype if ref.dtype.is_floating_point else torch.float32
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=ref.device, dtype=dtype)
    return out
