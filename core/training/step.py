"""One training step's computation (the model layer): ground truth of a batch as normalised
:class:`Targets`, the network's raw training outputs (:func:`forward_for_training`) and the loss
terms (:func:`compute_losses`).

Ground truth is expressed in the first view's camera frame and normalised to unit mean point
distance (the paper's normalisation); the paper's five losses come from
:mod:`~da3_plugins.core.losses`, plus the optional correspondence aid of this project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import conventions as conv
from .. import losses as L
from ..errors import OptionError
from ..geometry import cameras_to_ray_map
from ..model.camera import encode_pose, invert_rigid
from ..model.config import PATCH_SIZE
from ..points import depth_to_points
from ..preprocess import normalize
from .data import Batch


@dataclass
class Targets:
    """Normalised ground truth of a batch (torch), in view 0's camera frame."""

    images: Tensor  # (B, N, 3, H, W) ImageNet-normalised
    depth: Tensor  # (B, N, H, W), divided by the scene scale
    mask: Tensor  # (B, N, H, W) bool, valid depth
    points: Tensor  # (B, N, H, W, 3) in view 0's frame, scaled
    rays: Tensor  # (B, N, h, w, 6) directions (z = 1 in the camera) and scaled centres
    ray_mask: Tensor  # (B, N, h, w) bool
    pose: Tensor  # (B, N, 9) pose codes of the scaled camera-to-view-0 transforms
    w2c: Tensor  # (B, N, 4, 4) scaled world(=view 0)-to-camera, for conditioning
    intrinsics: Tensor  # (B, N, 3, 3)
    scale: Tensor  # (B,)

    def to(self, device: torch.device) -> "Targets":
        """The targets on ``device`` (themselves on the CPU)."""
        if device.type == "cpu":
            return self
        return Targets(**{k: v.to(device) for k, v in vars(self).items()})


def prepare_targets(batch: Batch) -> Targets:
    """Ground truth in the first view's frame, scaled so that the mean distance of the valid
    points from the first camera is 1 (the paper's normalisation)."""
    b, n, h, w = batch.depth.shape
    ext = conv.as_4x4(batch.extrinsics)
    rel = ext @ conv.invert_rigid(ext[:, :1])  # world = view 0's camera
    k = batch.intrinsics.astype(np.float64)
    depth = torch.from_numpy(batch.depth.astype(np.float32))
    mask = depth > 0
    points = torch.from_numpy(depth_to_points(batch.depth, k, rel))  # in view 0's frame, float32
    c2w = conv.invert_rigid(rel)
    ph, pw = h // PATCH_SIZE, w // PATCH_SIZE
    rays = np.stack([cameras_to_ray_map(rel[i, :, :3], k[i], (h, w), (8 * ph, 8 * pw)) for i in range(b)])
    trans = torch.from_numpy(c2w[..., :3, 3].astype(np.float32))
    depth, points, trans, scale = L.normalize_scene(depth, points, trans, mask)
    rays = torch.from_numpy(rays.astype(np.float32))
    rays = torch.cat((rays[..., :3], rays[..., 3:] / scale[:, None, None, None, None]), -1)
    c2w_t = torch.from_numpy(c2w.astype(np.float32))
    c2w_t[..., :3, 3] = trans
    kt = torch.from_numpy(k.astype(np.float32))
    pose = encode_pose(c2w_t, kt, (h, w))
    images = normalize(batch.images.reshape(b * n, h, w, 3)).unflatten(0, (b, n))
    return Targets(images=images, depth=depth, mask=mask, points=points, rays=rays,
                   ray_mask=torch.ones(rays.shape[:-1], dtype=torch.bool), pose=pose,
                   w2c=invert_rigid(c2w_t), intrinsics=kt, scale=scale)


# ----------------------------------------------------------------------------- forward and loss


def forward_for_training(net, images: Tensor, w2c: Optional[Tensor] = None, intrinsics: Optional[Tensor] = None,
                         match_heads: bool = False) -> Dict[str, Tensor]:
    """Raw training outputs of an any-view network: depth, depth_conf, ray, ray_conf and the
    9-D pose code.  The first view is the reference (``ref_view_strategy="first"``), so the
    predictions live in its frame, like the targets.

    match_heads: also return, for every cross-view block, head 0's queries of the patches of
    views 1.. (``"match_q"``: list of (B, N-1, P, d)) and its keys of view 0's patches
    (``"match_k"``: list of (B, P, d)), for :func:`~.losses.correspondence_loss`.
    """
    if net.cfg.head.kind != "dualdpt" or net.cam_dec is None:
        raise OptionError(f"{net.cfg.name}: training needs an any-view model (depth + ray heads and a camera decoder)")
    n = images.shape[1]
    h, w = images.shape[-2:]
    cam_token = net.cam_enc(w2c, intrinsics, (h, w)) if w2c is not None else None
    blocks = net.backbone.pretrained.blocks
    cross = [i for i in range(len(blocks)) if net.backbone.is_cross_view(i)]
    seen: Dict[int, Tensor] = {}  # the cross-view blocks' attention inputs
    hooks = []
    if match_heads and n > 1:
        for i in cross:
            hooks.append(blocks[i].norm1.register_forward_hook(
                lambda _m, _inp, out, i=i: seen.__setitem__(i, out)))
    try:
        feats, _ = net.backbone(images, cam_token=cam_token, ref_view_strategy="first")
    finally:
        for hk in hooks:
            hk.remove()
    res = net.head([f for f, _ in feats], images, with_ray=True)
    res["pose"] = net.cam_dec(feats[-1][1])
    if seen:
        # the patches (token 0 of each view is the special one); the cross-view RoPE puts every
        # patch at one position, so leaving it out does not change patch-patch logits
        pairs = [blocks[i].attn.head_query_key(seen[i].unflatten(1, (n, -1))[:, :, 1:]) for i in cross]
        res["match_q"] = [q[:, 1:] for q, _ in pairs]
        res["match_k"] = [k[:, 0] for _, k in pairs]
    return res


class TrainingForward(torch.nn.Module):
    """:func:`forward_for_training` of ``net`` as a module's ``forward``, so that
    :class:`torch.nn.parallel.DistributedDataParallel` can wrap it (it synchronises gradients
    of what runs inside its own ``forward``)."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, w2c: Optional[Tensor] = None, intrinsics: Optional[Tensor] = None,
                match_heads: bool = False) -> Dict[str, Tensor]:
        return forward_for_training(self.net, images, w2c, intrinsics, match_heads=match_heads)


def compute_losses(out: Dict[str, Tensor], tgt: Targets, weights: L.LossWeights,
                   divisor: L.Divisor = None) -> Dict[str, Tensor]:
    """The five loss terms (unweighted) of one batch.  ``divisor``: what the masked means divide
    their count of valid elements by (see :mod:`~da3_plugins.core.losses`; data-parallel
    training passes one that makes the processes' mean the whole batch's loss)."""
    h, w = tgt.depth.shape[-2:]
    ray = out["ray"]
    b, n = ray.shape[:2]
    ray_full = F.interpolate(ray.flatten(0, 1).permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1).unflatten(0, (b, n))
    return {
        "depth": L.depth_loss(out["depth"], tgt.depth, out["depth_conf"], tgt.mask, weights.lambda_c, divisor),
        "ray": L.ray_loss(ray, tgt.rays, tgt.ray_mask, conf=out["ray_conf"], lambda_c=weights.lambda_c,
                          divisor=divisor),
        "point": L.point_loss(out["depth"], ray_full[..., :3], ray_full[..., 3:], tgt.points, tgt.mask, divisor),
        "camera": L.camera_loss(out["pose"], tgt.pose),  # a plain mean: every process has B x N poses
        "gradient": L.gradient_loss(out["depth"], tgt.depth, tgt.mask, divisor),
        **({"correspondence": _correspondence(out, tgt, divisor)}
           if weights.correspondence > 0 and "match_q" in out else {}),
    }


def _correspondence(out: Dict[str, Tensor], tgt: Targets, divisor: L.Divisor = None) -> Tensor:
    """The correspondence aid: mean cross-entropy over the cross-view blocks' matching heads."""
    idx, ok = L.correspondence_targets(tgt.points, tgt.mask, tgt.depth, tgt.intrinsics, PATCH_SIZE)
    terms = [L.correspondence_loss(q, k, idx, ok, divisor) for q, k in zip(out["match_q"], out["match_k"])]
    return torch.stack(terms).mean()


__all__ = ["Targets", "prepare_targets", "forward_for_training", "TrainingForward", "compute_losses"]
