"""Operations on :class:`~.reconstruction.GaussianSet`: carried by a Sim(3), selected, joined."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .quaternions import matrix_to_quat_wxyz, quat_positive_w, quat_wxyz_multiply
from .reconstruction import GaussianSet

__all__ = ["transform_gaussians", "select_gaussians", "concat_gaussians"]


def transform_gaussians(gs: GaussianSet, r: np.ndarray, t: np.ndarray, s: float) -> GaussianSet:
    """Gaussians carried by X -> s R X + t (means, scales, rotations and SH colours)."""
    r = np.asarray(r, np.float64)
    means = (s * gs.means.astype(np.float64) @ r.T + t).astype(np.float32)
    # renderers read the 4 stored numbers as (w, x, y, z): turn them by R in that reading
    q = quat_wxyz_multiply(matrix_to_quat_wxyz(r)[None], gs.rotations.astype(np.float64))
    q = quat_positive_w(q / np.linalg.norm(q, axis=-1, keepdims=True))
    harm = gs.harmonics
    if gs.sh_degree > 0 and not np.allclose(r, np.eye(3)):
        from .model.gaussians import rotate_sh

        harm = rotate_sh(torch.from_numpy(np.ascontiguousarray(harm)), torch.from_numpy(r.astype(np.float32))).numpy()
    return GaussianSet(means=means, scales=gs.scales * np.float32(s), rotations=q.astype(np.float32),
                       harmonics=harm, opacities=gs.opacities, view=gs.view)


def select_gaussians(gs: GaussianSet, keep: np.ndarray) -> GaussianSet:
    """The Gaussians where ``keep`` (a boolean mask or indices)."""
    return GaussianSet(gs.means[keep], gs.scales[keep], gs.rotations[keep], gs.harmonics[keep],
                       gs.opacities[keep], None if gs.view is None else gs.view[keep])


def concat_gaussians(parts: Sequence[GaussianSet]) -> GaussianSet:
    """One set from several (in order)."""
    fields = ("means", "scales", "rotations", "harmonics", "opacities")
    arrays = [np.concatenate([getattr(g, f) for g in parts]) for f in fields]
    views = None if any(g.view is None for g in parts) else np.concatenate([g.view for g in parts])
    return GaussianSet(*arrays, views)
