"""The DA3 network as a :class:`~..predictor.Predictor`: one chunk of processed photos in,
depth, confidence, cameras, (optionally) Gaussians and loop-detection features out.

It reproduces the official ``DepthAnything3.inference`` for one pass: pose normalisation,
network, output processing, alignment to given poses (a RANSAC Sim(3) of the camera centres
from 10 views, as the official API does).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .. import conventions as conv
from ..gaussian_sets import transform_gaussians
from ..geometry import apply_sim3_to_w2c, umeyama
from ..predictor import ChunkInput, ChunkPrediction, default_intrinsics
from ..preprocess import normalize
from ..reconstruction import GaussianSet

__all__ = ["DA3Predictor", "align_input_poses", "normalize_extrinsics", "SKY_THRESHOLD", "RANSAC_MIN_VIEWS"]

SKY_THRESHOLD = 0.5  # the official Prediction's sky mask threshold
RANSAC_MIN_VIEWS = 10  # the official API aligns to given poses with RANSAC from 10 views


def normalize_extrinsics(w2c: torch.Tensor) -> torch.Tensor:
    """The official pose-conditioning normalisation of (B, N, 4, 4) world-to-camera poses.

    View 0 becomes the identity; translations are divided by the median camera distance to
    view 0 (``torch.median``: the lower median for even counts, view 0 included), clamped
    to at least 0.1.
    """
    rel = w2c @ torch.linalg.inv(w2c[:, :1])
    rot = rel[..., :3, :3]
    centres = -(rot.transpose(-1, -2) @ rel[..., :3, 3:4])[..., 0]
    median = torch.clamp(torch.median(centres.norm(dim=-1)), min=0.1)
    out = rel.clone()
    out[..., :3, 3] = rel[..., :3, 3] / median
    return out


def align_input_poses(pred_w2c: np.ndarray, input_w2c: np.ndarray, seed: int = 42):
    """Sim(3) (R, t, s) with predicted centre ~= s R input centre + t, as the official API fits it.

    Below :data:`RANSAC_MIN_VIEWS` views a plain Umeyama fit of the camera centres; from
    there a RANSAC variant: 10 draws of max(3, ceil(N/2)) views (``numpy.random.default_rng(seed)``),
    inliers within the median nearest-neighbour distance after a global pre-fit, score
    (inlier count, then mean error), refit on the inliers when there are at least 3.
    Two views (collinear centres) are accepted: the scale is still defined.
    """
    ref, est = conv.camera_centers(pred_w2c), conv.camera_centers(input_w2c)
    n = ref.shape[0]
    if n < RANSAC_MIN_VIEWS:
        return umeyama(est, ref, allow_collinear=n < 3)
    r0, t0, s0 = umeyama(est, ref)
    pre = s0 * est @ r0.T + t0
    nn = np.linalg.norm(pre[:, None, :] - ref[None, :, :], axis=-1).min(1)
    thresh = float(np.median(nn))
    rng = np.random.default_rng(seed)
    sub_n = max(3, (n + 1) // 2)
    best, best_score, best_inliers = (r0, t0, s0), (-1, np.inf), None
    for _ in range(10):
        pick = rng.choice(np.arange(n), size=sub_n, replace=False)
        try:
            r, t, s = umeyama(est[pick], ref[pick])
        except ValueError:
            continue
        err = np.linalg.norm(s * est @ r.T + t - ref, axis=1)
        inl = err <= thresh
        k = int(inl.sum())
        mean = float(err[inl].mean()) if k else np.inf
        if k > best_score[0] or (k == best_score[0] and mean < best_score[1]):
            best, best_score, best_inliers = (r, t, s), (k, mean), inl
    if best_inliers is not None and best_inliers.sum() >= 3:
        return umeyama(est[best_inliers], ref[best_inliers])
    return best


class DA3Predictor:
    """A loaded :class:`~.da3model.DA3Model` behind the predictor protocol."""

    def __init__(self, model) -> None:
        self.model = model
        self.name = model.source or model.preset
        self.predicts_cameras = bool(model.predicts_cameras)
        self.has_gaussians = bool(model.has_gaussians)
        self.is_metric = bool(getattr(model, "is_metric", False))

    def predict(self, chunk: ChunkInput) -> ChunkPrediction:
        opts = chunk.options
        net, device = self.model.net, self.model.device
        n, h, w = chunk.pixels.shape[:3]
        images = normalize(chunk.pixels)[None].to(device)
        if opts.seed is not None and len(chunk.views):
            # each pass seeded on its own: a resumed run repeats the passes it did not finish exactly
            torch.manual_seed(opts.seed + int(chunk.views[0]))
        ext_t = k_t = None
        if chunk.extrinsics is not None:
            ext_t = normalize_extrinsics(torch.from_numpy(conv.as_4x4(chunk.extrinsics)).float()[None].to(device))
            k_t = torch.from_numpy(np.asarray(chunk.intrinsics)).float()[None].to(device)
        with torch.inference_mode():
            out = net(images, ext_t, k_t, use_ray_pose=opts.use_ray_pose, infer_gs=opts.infer_gs,
                      ref_view_strategy=opts.ref_view_strategy)
        depth = out.depth[0].float().cpu().numpy()
        conf = None if out.depth_conf is None else out.depth_conf[0].float().cpu().numpy()
        sky = None if out.sky is None else (out.sky[0].float().cpu().numpy() >= SKY_THRESHOLD)
        features = None
        if chunk.want_features and out.view_features is not None:
            features = out.view_features[0].float().cpu().numpy()
        if out.extrinsics is not None:
            ext = out.extrinsics[0].double().cpu().numpy()[:, :3, :]
            k = out.intrinsics[0].double().cpu().numpy()
        else:
            ext = np.tile(np.eye(4)[:3], (n, 1, 1))
            k = default_intrinsics(n, h, w)
        gaussians = self._gaussians(out, n, h, w, chunk.views)

        if chunk.extrinsics is not None:
            r, t, s = align_input_poses(ext, chunk.extrinsics)
            k = np.asarray(chunk.intrinsics, np.float64)
            if opts.align_to_input_ext_scale:
                # into the given poses' frame: X_in = R^T (X_pred - t) / s
                ext = conv.as_4x4(chunk.extrinsics)[:, :3, :].astype(np.float64)
                depth = depth / np.float32(s)
                if gaussians is not None:
                    gaussians = transform_gaussians(gaussians, r.T, -(r.T @ t) / s, 1.0 / s)
            else:
                # the given poses carried into the prediction's frame
                ext = apply_sim3_to_w2c(chunk.extrinsics, r, t, s)
        return ChunkPrediction(depth=depth, extrinsics=ext, intrinsics=k, conf=conf, sky=sky,
                               gaussians=gaussians, features=features, is_metric=bool(out.is_metric))

    @staticmethod
    def _gaussians(out, n: int, h: int, w: int, views: np.ndarray) -> Optional[GaussianSet]:
        if out.gaussians is None:
            return None
        g = out.gaussians
        gaussians = GaussianSet(
            means=g.means[0].float().cpu().numpy(), scales=g.scales[0].float().cpu().numpy(),
            rotations=g.rotations[0].float().cpu().numpy(), harmonics=g.harmonics[0].float().cpu().numpy(),
            opacities=g.opacities[0].float().cpu().numpy(),
            view=np.repeat(np.asarray(views, np.int32), h * w),
        )
        # the adapter's frame: the predicted one with translations times frame_scale, and
        # (nested model) before the metric scaling of depth and poses
        factor = float(out.scale_factor or 1.0)
        if g.frame_scale is not None:
            factor /= float(g.frame_scale[0])
        if factor != 1.0:
            gaussians = transform_gaussians(gaussians, np.eye(3), np.zeros(3), factor)
        return gaussians
