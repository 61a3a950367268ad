"""Geometry and evaluation metrics, batched; numpy in and out (torch tensors accepted).

One concern per module, every name re-exported here (``from da3_plugins.core.geometry import X``
and ``geometry.X`` both work):

* :mod:`.camera` -- camera geometry.  points: :func:`depth_to_camera_points`,
  :func:`depth_to_world_points` (both call the one back-projection,
  :func:`core.points.depth_to_points`); frames: :func:`poses_relative_to`,
  :func:`cameras_to_ray_map`, :func:`rays_to_cameras`; Sim(3): :func:`umeyama_sim3`,
  :func:`apply_sim3_to_points`, :func:`apply_sim3_to_poses`.
* :mod:`.metrics` -- the official benchmark's metrics.  poses: :func:`relative_pose_errors`,
  :func:`pose_auc`, :func:`pose_auc_from_errors`; depth: :func:`abs_rel`, :func:`delta1`,
  :func:`depth_metrics`, :func:`depth_scale`; reconstruction: :func:`chamfer_and_fscore`,
  :class:`ReconstructionScores`.
* :mod:`.robust` -- robust chunk joints: :func:`robust_sim3` (weighted Umeyama inside IRLS with
  Huber weights; Sim(3), or SE(3) for metric models) and its result :class:`Sim3Fit`.
* :mod:`.spatial` -- spatial index: :class:`KDTree`, :func:`nearest_neighbors`,
  :func:`nearest_distances`, :func:`voxel_down_sample`.

Conventions (``docs/conventions.md``): depth is z-depth; poses are OpenCV world-to-camera
``(N, 3|4, 4)``; intrinsics are in pixels in continuous coordinates (pixel centres at +0.5).
"""

from .camera import (apply_sim3_to_points, apply_sim3_to_poses, apply_sim3_to_w2c, cameras_to_ray_map,
                     depth_to_camera_points, depth_to_world_points, poses_relative_to, rays_to_cameras, umeyama,
                     umeyama_sim3)
from .metrics import (ReconstructionScores, abs_rel, chamfer_and_fscore, delta1, depth_metrics, depth_scale, pose_auc,
                      pose_auc_from_errors, relative_pose_errors)
from .robust import Sim3Fit, robust_sim3
from .spatial import KDTree, nearest_distances, nearest_neighbors, voxel_down_sample

__all__ = [
    "depth_to_camera_points", "depth_to_world_points", "poses_relative_to", "cameras_to_ray_map",
    "rays_to_cameras", "umeyama_sim3", "umeyama", "apply_sim3_to_points", "apply_sim3_to_poses",
    "apply_sim3_to_w2c", "relative_pose_errors", "pose_auc_from_errors", "pose_auc", "depth_scale",
    "depth_metrics", "abs_rel", "delta1", "KDTree", "nearest_neighbors", "nearest_distances", "voxel_down_sample",
    "ReconstructionScores", "chamfer_and_fscore", "Sim3Fit", "robust_sim3",
]
