"""The reconstruction the export tests write: a textured plane seen by three cameras, and
helpers to make Gaussians and to check that no writer modifies its input (a test helper)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core.reconstruction import GaussianSet, Reconstruction

H, W = 42, 56


def _look_at(centre, target):
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0, 1.0, 0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])  # rows: camera axes in world
    return np.concatenate([r, (-r @ centre)[:, None]], 1)


@pytest.fixture
def rec():
    """A textured plane z = 4 seen by 3 cameras; processed 42x56, originals 300x400, 300x400 and
    330x400 (the last one cropped: a 1.5-row offset), so K differs between the two sizes."""
    n = 3
    k = np.array([[50.0, 0, 28.5], [0, 52.0, 20.5], [0, 0, 1]])
    centres = [np.array([-0.5, 0.1, 0.0]), np.array([0.0, 0.0, 0.2]), np.array([0.6, -0.1, 0.1])]
    ext = np.stack([_look_at(c, np.array([0.0, 0.0, 4.0])) for c in centres])
    # exact z-depth of the plane z = 4 through each pixel centre
    u, v = conv.pixel_centres(H, W)
    depth = np.zeros((n, H, W), np.float32)
    for i in range(n):
        rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(k).T  # camera frame, z = 1
        d_world = rays @ ext[i, :3, :3]  # R^T ray
        c = conv.camera_centers(ext[i])
        depth[i] = (4.0 - c[2]) / d_world[..., 2]
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, H, W, 3), dtype=np.uint8)
    conf = (1 + rng.random((n, H, W)) * 3).astype(np.float32)
    pt = np.stack([np.diag([W / 400, H / 300, 1.0]), np.diag([W / 400, H / 300, 1.0]),
                   np.array([[W / 400, 0, 0], [0, H / 300, -1.5], [0, 0, 1]])])
    return Reconstruction(images=images, depth=depth, extrinsics=ext, intrinsics=np.tile(k, (n, 1, 1)), conf=conf,
                          original_sizes=np.array([[300, 400], [300, 400], [330, 400]]), pixel_transform=pt,
                          image_names=["a", "b", "c"], model="test")


def _random_gaussians(g: int, degree: int, seed: int = 0) -> GaussianSet:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(g, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return GaussianSet(means=rng.normal(size=(g, 3)), scales=rng.random((g, 3)) * 0.1 + 0.01, rotations=q,
                       harmonics=rng.normal(size=(g, 3, (degree + 1) ** 2)), opacities=rng.random(g) * 0.98 + 0.01)


def _per_pixel_gaussians(rec: Reconstruction, view_order=(1, 0, 2)) -> GaussianSet:
    """One Gaussian per pixel at its world point, views concatenated in ``view_order`` (as a
    chunked run may), pixels row-major within each view."""
    world = rec.world_points()
    idx = list(view_order)
    means = world[idx].reshape(-1, 3)
    g = len(means)
    return GaussianSet(means=means, scales=np.full((g, 3), 0.01), rotations=np.tile([1.0, 0, 0, 0], (g, 1)),
                       harmonics=np.zeros((g, 3, 1)), opacities=np.full(g, 0.5),
                       view=np.repeat(np.array(idx), H * W))


def _snapshot(rec: Reconstruction):
    return copy.deepcopy(rec)


def _assert_unchanged(rec: Reconstruction, before: Reconstruction) -> None:
    for f in dataclasses.fields(Reconstruction):
        a, b = getattr(rec, f.name), getattr(before, f.name)
        if isinstance(b, GaussianSet):
            for g in dataclasses.fields(GaussianSet):
                np.testing.assert_array_equal(getattr(a, g.name), getattr(b, g.name), err_msg=f"gaussians.{g.name}")
        elif isinstance(b, np.ndarray):
            assert a.dtype == b.dtype, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name


def _ply_header(path) -> list:
    with open(path, "rb") as fh:
        lines = []
        while not lines or lines[-1] != "end_header":
            lines.append(fh.readline().decode("ascii").strip())
    return lines


# ------------------------------------------------------------------------------ point PLY
