"""Evaluation-only scene families (issue 19): scenes that training never produces.

A model trained on the generators of :mod:`.scene` and :mod:`.randomized` (rooms of boxes,
spheres and flat panels, ray cast, Lambert-lit solid textures) is scored here on scenes of
other primitives, other shading and other textures, made by code that shares nothing with
those generators (its own cameras, geometry, intersection, textures and lighting):

* ``terrain`` (:mod:`.heldout_terrain`): an outdoor heightfield of summed ridged sinusoids
  under a sky (depth 0 there), cameras walking or flying over it; slope- and height-banded
  materials (grass, rock, sand, snow) with cellular (Worley) texture, sky-dome + sun
  lighting and aerial-perspective haze; exact hits by conservative marching and Newton
  refinement on the analytic height.
* ``shapes`` (:mod:`.heldout_shapes`): a round hall (cylindrical wall, floor and ceiling) with
  tori, capped cylinders, capsules and staircases, sphere traced on exact signed distance
  functions; polka-dot, brick, wood-ring, marble and Voronoi textures, two point lights with
  Blinn-Phong highlights and SDF ambient occlusion.

Both give exact z-depth (ray parameter with camera-frame z = 1, refined to ~1e-9 relative)
and exact OpenCV cameras, so depth reprojects between views.

    scene = make_heldout_scene("terrain", seed=0, num_views=4, height=126, width=168)
    scenes = heldout_family("shapes", count=8, views=4, height=378, width=504)
"""

from __future__ import annotations

from typing import List

from .heldout_base import HeldoutScene
from .heldout_shapes import make_shapes_scene
from .heldout_terrain import make_terrain_scene

FAMILIES = ("terrain", "shapes")


def make_heldout_scene(family: str, seed: int = 0, num_views: int = 4, height: int = 126,
                       width: int = 168) -> HeldoutScene:
    """One scene of ``family`` ("terrain" or "shapes"), deterministic in ``seed``."""
    if family == "terrain":
        return make_terrain_scene(seed, num_views, height, width)
    if family == "shapes":
        return make_shapes_scene(seed, num_views, height, width)
    raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")


def heldout_family(family: str, count: int = 8, views: int = 4, height: int = 126, width: int = 168,
                   seed: int = 2000) -> List[HeldoutScene]:
    """``count`` scenes of ``family`` with seeds ``seed``, ``seed + 1``, ..."""
    if count < 1 or views < 1:
        raise ValueError(f"count, views: expected >= 1, got {count}, {views}")
    return [make_heldout_scene(family, seed + i, views, height, width) for i in range(count)]


__all__ = ["FAMILIES", "HeldoutScene", "make_heldout_scene", "heldout_family"]
