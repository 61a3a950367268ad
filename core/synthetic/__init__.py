"""Synthetic scenes with exact ground truth: textured rooms, boxes and spheres, ray cast.

Pure numpy (torch only inside the Sim(3) fits of :func:`ate` and of conditioned chunks, through
:mod:`core.geometry`; no other dependency).  Every pixel's ray goes through its centre
``(i + 0.5, j + 0.5)`` with the scene's K (continuous pixel coordinates, see
``docs/conventions.md``), meets the nearest primitive, and gives

* the exact **z-depth** (float32; the ray is built with camera-frame z = 1, so the ray
  parameter *is* the z-depth),
* a colour: a procedural solid texture (checker / stripes / fractal noise, two colours per
  primitive, plus fine detail noise) times Lambertian shading from one directional light and
  an ambient term.  Shading is view-independent, so the views are photometrically consistent.

**Background.**  By default the scenes are *closed* (a room encloses everything), so every
ray hits a surface and every depth is valid.  With ``closed=False`` the room is replaced by a
finite floor; rays that hit nothing get **depth 0** (the project's "invalid" value, which
:meth:`Reconstruction.valid_mask` drops) and the background colour, and
:attr:`SyntheticScene.background` marks them.

**World frame.**  OpenCV-like: y points *down* (the floor is the plane y = ``floor_y`` > 0),
so "up" is -y.  Cameras are OpenCV (x right, y down, z forward).

The surface is the union of the primitives' boundaries: :meth:`SyntheticScene.sample_surface`
and :meth:`SyntheticScene.distance_to_surface` use exactly that set (object placement avoids
overlaps between objects, but a box's bottom face lies on the floor);
``sample_surface(n, visible=True)`` keeps to the part some view sees (exact ray-cast
visibility, :meth:`SyntheticScene.visible_from`).

    scene = make_scene("room", num_views=6, height=126, width=168, seed=0)
    rec = scene.to_reconstruction()          # the ground truth as a Reconstruction
    pts = scene.sample_surface(10000)        # points on the true surface, by area
    d = scene.distance_to_surface(points)    # exact unsigned distance to it
    rays = scene.ray_map(relative_to=0)      # exact DA3-layout ray map

Long inputs and drift (issue 15): :mod:`.trajectories` renders a room along a 240-view loop or
a path that never returns (:func:`make_long_scene`) and measures true covisibility and the
absolute trajectory error (:func:`ate`); :mod:`.predictor` answers chunks with the truth plus
seeded per-chunk errors that drift when chunks are joined (:class:`GroundTruthPredictor`, a
:class:`core.predictor.Predictor`), with pixel-based features for loop detection::

    scene, ext, ks, images, depth = make_long_scene("loop", n=240)
    predictor = GroundTruthPredictor.from_scene(scene, rotation_deg=0.5, scale=0.02, seed=0)

Modules: :mod:`.raycast` (materials, primitives, textures, ray casting and rendering),
:mod:`.scene` (scene configs, the scene with its ground-truth queries, layout generation),
:mod:`.trajectories` (long camera paths, covisibility, ATE) and :mod:`.predictor` (the
ground-truth predictor, image features); each imports only the ones before it.
"""

from .raycast import Box, Lighting, Material, Primitive, Quad, Sphere, cast_rays, render, room_quads
from .scene import SceneConfig, SyntheticScene, generate_scene, look_at, make_scene, ray_map
from .trajectories import ate, covisibility, loop_trajectory, make_long_scene, make_shot, open_trajectory
from .predictor import GroundTruthPredictor, image_features

__all__ = [
    "Material", "Lighting", "Quad", "Box", "Sphere", "Primitive", "room_quads", "cast_rays", "render",
    "SceneConfig", "SyntheticScene", "ray_map", "look_at", "generate_scene", "make_scene",
    "loop_trajectory", "open_trajectory", "make_long_scene", "make_shot", "covisibility", "ate",
    "GroundTruthPredictor", "image_features",
]

# issue 19: domain-randomised training scenes (.randomized) and the evaluation-only families
# (.heldout: terrain, shapes), which share no code with the generators above
from .randomized import make_randomized_scene, random_scene_spec, render_spec_views  # noqa: E402
from .heldout import HeldoutScene, heldout_family, make_heldout_scene  # noqa: E402

__all__ += ["make_randomized_scene", "random_scene_spec", "render_spec_views", "HeldoutScene", "heldout_family",
            "make_heldout_scene"]
