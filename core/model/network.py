"""The DA3 networks: ``DA3Net`` (any-view, mono, metric) and ``NestedDA3Net``.

``state_dict()`` keys equal the published checkpoints' keys without their leading
``model.`` (the loader in ``loading.py`` strips and checks it).

Precision: the backbone may run under bf16/fp16 autocast (``backbone_dtype``), as the
official GPU policy does, or (``backbone_dtype = torch.qint8``, CPU only) as a copy whose
Linear layers are dynamically quantised to int8 (``core/precision.py``); the camera encoder,
heads, camera decoder, ray solver and Gaussian adapter always run in float32.
"""

from __future__ import annotations

import contextlib
from typing import Optional, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from ..options import REF_VIEW_STRATEGIES
from .backbone import Backbone
from .camera import CameraDec, CameraEnc, as_homogeneous, decode_pose, invert_rigid
from .config import PATCH_SIZE, NestedConfig, NetConfig
from .heads import build_head
from .outputs import NetworkOutput

# Sky handling thresholds (official values): sky scores below this are "not sky".
SKY_THRESHOLD = 0.3
QUANTILE_SAMPLES = 100_000
NESTED_SKY_DEPTH_CAP = 200.0
METRIC_FOCAL_UNIT = 300.0


def _sample_with_replacement(values: Tensor) -> Tensor:
    """At most QUANTILE_SAMPLES values drawn with replacement (torch.randint), as upstream."""
    if values.numel() > QUANTILE_SAMPLES:
        return values[torch.randint(0, values.numel(), (QUANTILE_SAMPLES,), device=values.device)]
    return values


def _sample_without_replacement(values: Tensor) -> Tensor:
    """At most QUANTILE_SAMPLES values, a randperm subset, as upstream."""
    if values.numel() > QUANTILE_SAMPLES:
        return values[torch.randperm(values.numel(), device=values.device)[:QUANTILE_SAMPLES]]
    return values


def check_inputs(images: Tensor, extrinsics: Optional[Tensor], intrinsics: Optional[Tensor]) -> None:
    """Raise ValueError naming what was expected for ill-formed network inputs."""
    if not isinstance(images, Tensor) or images.dim() != 5:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images: expected a tensor of shape (B, N, 3, H, W), got {shape}")
    b, n, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"images: expected 3 colour channels in dim 2 of (B, N, 3, H, W), got {c}")
    if h % PATCH_SIZE or w % PATCH_SIZE or h == 0 or w == 0:
        raise ValueError(f"images: H and W must be positive multiples of {PATCH_SIZE}, got H={h}, W={w}")
    if extrinsics is not None:
        if intrinsics is None:
            raise ValueError("extrinsics were given without intrinsics: pose conditioning needs both")
        if extrinsics.shape[:2] != (b, n) or extrinsics.shape[2:] not in ((4, 4), (3, 4)):
            raise ValueError(f"extrinsics: expected (B, N, 4, 4) world-to-camera with B={b}, N={n}, got {tuple(extrinsics.shape)}")
    if intrinsics is not None and intrinsics.shape != (b, n, 3, 3):
        raise ValueError(f"intrinsics: expected (B, N, 3, 3) = ({b}, {n}, 3, 3), got {tuple(intrinsics.shape)}")


class DA3Net(nn.Module):
    """One DA3 network (any-view, monocular or metric), built from a ``NetConfig``."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg.backbone)
        self.head = build_head(cfg.head)
        if cfg.with_camera:
            self.cam_enc = CameraEnc(cfg.backbone.embed_dim)
            self.cam_dec = CameraDec(cfg.backbone.feature_dim)
        else:
            self.cam_enc = self.cam_dec = None
        if cfg.gs_head is not None:
            from .gaussians import GaussianAdapter

            self.gs_head = build_head(cfg.gs_head)
            self.gs_adapter = GaussianAdapter(cfg.gaussians)
        else:
            self.gs_head = self.gs_adapter = None
        #: dtype for autocast around the backbone (None: no autocast, plain float32)
        self.backbone_dtype: Optional[torch.dtype] = None

    # -- capabilities -----------------------------------------------------------------

    @property
    def predicts_cameras(self) -> bool:
        return self.cam_dec is not None

    @property
    def has_gaussians(self) -> bool:
        return self.gs_head is not None

    def _autocast(self, device_type: str):
        if self.backbone_dtype in (None, torch.float32, torch.qint8):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.backbone_dtype)

    def _backbone_module(self, device_type: str) -> nn.Module:
        """The backbone the forward pass runs: itself, or its int8 copy (precision int8)."""
        if self.backbone_dtype != torch.qint8:
            return self.backbone
        from ..precision import int8_backbone

        return int8_backbone(self, device_type)

    # -- forward ----------------------------------------------------------------------

    def forward(
        self,
        images: Tensor,
        extrinsics: Optional[Tensor] = None,
        intrinsics: Optional[Tensor] = None,
        *,
        use_ray_pose: bool = False,
        infer_gs: bool = False,
        ref_view_strategy: str = "saddle_balanced",
        export_feat_layers: Sequence[int] = (),
    ) -> NetworkOutput:
        """Run the network.

        Args:
            images: (B, N, 3, H, W) ImageNet-normalised, H and W multiples of 14.
            extrinsics: optional (B, N, 4, 4) OpenCV world-to-camera poses to condition on
                (normalised as the official API does; see ``normalize_extrinsics``).
            intrinsics: (B, N, 3, 3) pixels of (H, W); required with ``extrinsics``.
            use_ray_pose: derive cameras from the ray map instead of the camera decoder
                (random sampling inside: seed the torch RNG for repeatable results).
            infer_gs: also predict 3-D Gaussians (models with a GS head).
            ref_view_strategy: "first", "middle", "saddle_balanced" or "saddle_sim_range".
            export_feat_layers: backbone blocks whose normalised tokens go to ``aux``.
        """
        check_inputs(images, extrinsics, intrinsics)
        if ref_view_strategy not in REF_VIEW_STRATEGIES:
            raise ValueError(f"ref_view_strategy: expected one of {', '.join(REF_VIEW_STRATEGIES)}, got {ref_view_strategy!r}")
        if extrinsics is not None and self.cam_enc is None:
            raise ValueError(f"{self.cfg.name} has no camera encoder: it cannot be conditioned on extrinsics")
        if use_ray_pose and self.cfg.head.kind != "dualdpt":
            raise ValueError(f"{self.cfg.name} has no ray head: use_ray_pose needs an any-view model")
        if infer_gs and self.gs_head is None:
            raise ValueError(f"{self.cfg.name} has no Gaussian head: infer_gs needs da3-giant or the nested model")
        h, w = images.shape[-2:]
        b, n = images.shape[:2]

        cam_token = None
        if extrinsics is not None:
            extrinsics = as_homogeneous(extrinsics.float())
            with torch.autocast(device_type=images.device.type, enabled=False):
                cam_token = self.cam_enc(extrinsics, intrinsics.float(), (h, w))

        with self._autocast(images.device.type):
            feats, aux = self._backbone_module(images.device.type)(
                images, cam_token=cam_token, ref_view_strategy=ref_view_strategy,
                export_feat_layers=export_feat_layers)

        with torch.autocast(device_type=images.device.type, enabled=False):
            feats = [(f.float(), t.float()) for f, t in feats]
            patch_feats = [f for f, _ in feats]
            if self.cfg.head.kind == "dualdpt":
                # the ray branch is only computed when its result is used
                wants_ray = use_ray_pose or self.cam_dec is None
                res = self.head(patch_feats, images, with_ray=wants_ray)
            else:
                res = self.head(patch_feats, images)
            out = NetworkOutput(depth=res["depth"], depth_conf=res.get("depth_conf"), sky=res.get("sky"))
            out.view_features = patch_feats[0][..., :self.cfg.backbone.embed_dim].mean(-2)

            if use_ray_pose:
                from .ray_pose import rays_to_cameras

                out.extrinsics, out.intrinsics = rays_to_cameras(res["ray"], res["ray_conf"], (h, w))
            elif self.cam_dec is not None:
                c2w, k = decode_pose(self.cam_dec(feats[-1][1]), (h, w))
                out.extrinsics, out.intrinsics = invert_rigid(c2w), k
            else:
                out.ray, out.ray_conf = res.get("ray"), res.get("ray_conf")

            if infer_gs:
                gs = self.gs_head(patch_feats, images)
                # the adapter places Gaussians with the *predicted* cameras (the depth lives
                # in their frame); given poses only set the scale
                out.gaussians = self.gs_adapter(
                    as_homogeneous(out.extrinsics), out.intrinsics, out.depth, gs["raw_gs_conf"], gs["raw_gs"],
                    gt_extrinsics=extrinsics,
                )

        if out.sky is not None:
            self._fill_sky(out)
        if export_feat_layers:
            out.aux = {f"feat_layer_{i}": a for i, a in zip(sorted(set(export_feat_layers)), aux)}
        return out

    @staticmethod
    def _fill_sky(out: NetworkOutput) -> None:
        """Monocular models: sky pixels get the 99th percentile of the other depths."""
        non_sky = out.sky < SKY_THRESHOLD
        n_non_sky = int(non_sky.sum())
        if n_non_sky <= 10 or non_sky.numel() - n_non_sky <= 10:
            return
        far = torch.quantile(_sample_with_replacement(out.depth[non_sky]), 0.99)
        out.depth = torch.where(non_sky, out.depth, far)


class NestedDA3Net(nn.Module):
    """Any-view giant network whose depth and poses are scaled to metres by a metric network."""

    def __init__(self, cfg: NestedConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.da3 = DA3Net(cfg.anyview)
        self.da3_metric = DA3Net(cfg.metric)

    @property
    def predicts_cameras(self) -> bool:
        return True

    @property
    def has_gaussians(self) -> bool:
        return self.da3.has_gaussians

    @property
    def backbone_dtype(self) -> Optional[torch.dtype]:
        return self.da3.backbone_dtype

    @backbone_dtype.setter
    def backbone_dtype(self, value: Optional[torch.dtype]) -> None:
        self.da3.backbone_dtype = value
        self.da3_metric.backbone_dtype = value

    def forward(self, images: Tensor, extrinsics: Optional[Tensor] = None, intrinsics: Optional[Tensor] = None,
                **kwargs) -> NetworkOutput:
        """Same arguments as ``DA3Net.forward``; returns metric depth and poses."""
        out = self.da3(images, extrinsics, intrinsics, **kwargs)
        metric = self.da3_metric(images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            k = out.intrinsics
            focal = (k[..., 0, 0] + k[..., 1, 1])[..., None, None] / 2
            metric_depth = metric.depth * focal / METRIC_FOCAL_UNIT

            non_sky = metric.sky < SKY_THRESHOLD
            if int(non_sky.sum()) <= 10:
                raise ValueError("nested model: fewer than 11 non-sky pixels, cannot align the metric scale")
            median_conf = torch.quantile(_sample_without_replacement(out.depth_conf[non_sky]), 0.5)
            mask = (out.depth_conf >= median_conf) & non_sky & (metric_depth > 0.01) & (out.depth > 0.001)
            d, m = out.depth[mask], metric_depth[mask]
            # least-squares scale with metric ~= s * depth
            scale = (m * d).sum() / torch.clamp((d * d).sum(), min=1e-12)
            out.depth = out.depth * scale
            ext = out.extrinsics.clone()
            ext[..., :3, 3] *= scale
            out.extrinsics = ext
            out.is_metric = True
            out.scale_factor = float(scale)

            far = torch.quantile(_sample_with_replacement(out.depth[non_sky]), 0.99)
            far = torch.clamp(far, max=NESTED_SKY_DEPTH_CAP)
            out.depth = torch.where(non_sky, out.depth, far)
            # official behaviour: sky pixels get confidence 1.0, the lowest value exp()+1 gives
            out.depth_conf = torch.where(non_sky, out.depth_conf, torch.ones_like(out.depth_conf))
        # the metric branch's sky is not part of the nested output (as upstream)
        return out


def build_network(cfg) -> nn.Module:
    """A randomly initialised network for a NetConfig or NestedConfig."""
    return NestedDA3Net(cfg) if isinstance(cfg, NestedConfig) else DA3Net(cfg)
