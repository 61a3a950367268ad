"""Points become Gaussians (core/seeds.py): the colour constant, the pixel-wide seed size and
the multi-view de-duplication, on hand-made cases."""

import math

import numpy as np

from da3_plugins.core import conventions as conv
from da3_plugins.core.points import depth_to_points
from da3_plugins.core.seeds import (EPS2D, SEED_FOOTPRINT, SH_C0, dedupe_views, rgb_to_sh_dc, seed_footprint,
                                    seed_scales, sh_dc_to_rgb)


def test_sh_colour_round_trip():
    rgb = np.array([[0, 128, 255], [10, 20, 30]], np.uint8)
    dc = rgb_to_sh_dc(rgb)
    assert SH_C0 == 1 / (2 * math.sqrt(math.pi))
    np.testing.assert_allclose(dc[0, 1], (128 / 255 - 0.5) / SH_C0, rtol=1e-4)  # float32
    np.testing.assert_allclose(sh_dc_to_rgb(dc) * 255, rgb, atol=1e-3)


def test_seed_footprint_counts_the_rasteriser_filter_and_the_thinning():
    drawn = lambda sigma: math.sqrt(sigma**2 + EPS2D)  # what gsplat / core.render draw  # noqa: E731
    assert math.isclose(drawn(seed_footprint()), SEED_FOOTPRINT)
    # a quarter of the points: twice as wide, so the surface stays closed
    assert math.isclose(drawn(seed_footprint(0.25)), 2 * SEED_FOOTPRINT)
    assert math.isclose(drawn(seed_footprint(1.0, footprint=0.8)), 0.8)
    assert seed_footprint(1.0, footprint=0.1) == 0.1  # never below MIN_FOOTPRINT (0.1)


def test_seed_scales_are_the_footprint_in_world_units_of_the_own_view():
    ext = np.stack([np.eye(4)[:3], np.eye(4)[:3]])
    ext[1, 2, 3] = 2.0  # view 1 is 2 units further back: z is larger there
    k = np.tile(np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), (2, 1, 1))
    k[1, 0, 0] = 50.0
    pts = np.array([[0.0, 0.0, 4.0], [1.0, 0.0, 4.0]])
    s = seed_scales(pts, np.array([0, 1]), ext, k)
    np.testing.assert_allclose(s, [seed_footprint() * 4 / 100, seed_footprint() * 6 / 50])


def test_dedupe_keeps_each_surface_patch_once_from_the_finer_view():
    h, w = 24, 32
    k = np.tile(np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]]), (2, 1, 1))
    ext = np.stack([np.eye(4)[:3], np.eye(4)[:3]])
    ext[1, 2, 3] = 2.0  # view 1: same direction, 2 units further from the plane z = 4
    depth = np.stack([np.full((h, w), 4.0), np.full((h, w), 6.0)]).astype(np.float32)
    valid = np.ones((2, h, w), bool)
    pts = depth_to_points(depth, k, ext, dtype=np.float64).reshape(2, -1, 3)
    points = pts.reshape(-1, 3)
    view = np.repeat([0, 1], h * w)
    keep = dedupe_views(points, view, depth, ext, k, valid)
    assert keep[view == 0].all()  # view 0 is closer: it samples the plane more finely
    # view 1's points inside view 0's grid of pixel centres are dropped, the border it alone sees kept
    k0 = conv.intrinsics_to_integer_centres(k[0])
    uvw = pts[1] @ k0.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    assert 0 < inside.sum() < h * w
    np.testing.assert_array_equal(keep[view == 1], ~inside)
    # a view whose depth disagrees (another surface) drops nothing
    other = depth.copy()
    other[0] = 3.0
    keep_other = dedupe_views(depth_to_points(other, k, ext, dtype=np.float64).reshape(-1, 3), view, other, ext, k,
                              valid)
    assert keep_other.all()
