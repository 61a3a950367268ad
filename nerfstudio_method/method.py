"""``da3-splat``: a Gaussian-splat scene seeded from DA3's geometry, trainable and viewable on
CPU as well as GPU.

    ns-train da3-splat --data photos/ --pipeline.datamanager.dataparser.model /path/to/DA3-MODEL
    ns-train da3-splat --data out/scene.npz --machine.device-type cpu

It is splatfacto with three changes:

* the Gaussians start from DA3's own Gaussians when the reconstruction has them (giant and
  nested models), otherwise from DA3's points (the ``da3-data`` dataparser's seed points, each
  surface patch from the one view that sees it best): one per point, about a pixel wide at its
  depth (counting the rasteriser's 0.3 px^2 filter), opacity from DA3's confidence, colour from
  the photos -- a usable scene at step 0; refinement (default 300 steps, at full resolution) only
  polishes it, without densification;
* without CUDA it renders with the core's pure-PyTorch rasteriser (gsplat's kernels are
  CUDA-only); with CUDA it uses splatfacto's gsplat path unchanged;
* LPIPS is skipped when its AlexNet weights are not in the torch hub cache (said in the log;
  training never downloads anything).

``ns-export gaussian-splat`` works on its checkpoints (it is a SplatfactoModel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Type

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig, get_viewmat
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification
from nerfstudio.utils.rich_utils import CONSOLE

from da3_plugins.core.render import rasterize
from da3_plugins.core.seeds import rgb_to_sh_dc
from da3_plugins.nerfstudio.dataparser import DA3DataParserConfig

# checkpoints hold numpy scalars in the scheduler state; torch's weights_only loader (used by
# ns-export / ns-viewer) refuses them unless allowed
try:
    torch.serialization.add_safe_globals([np.core.multiarray.scalar, np.dtype, np.dtypes.Float64DType])
except AttributeError:  # pragma: no cover - older torch / numpy
    pass


def _lpips_weights_cached() -> bool:
    """torchmetrics' LPIPS loads torchvision's AlexNet weights from the torch hub cache."""
    import os

    hub = os.path.join(torch.hub.get_dir(), "checkpoints")
    return os.path.isdir(hub) and any(f.startswith("alexnet") for f in os.listdir(hub))


@dataclass
class DA3SplatModelConfig(SplatfactoModelConfig):
    _target: Type = field(default_factory=lambda: DA3SplatModel)
    initial_opacity: float = 0.9
    """Opacity at step 0 when the seed points carry no DA3 confidence."""
    use_da3_gaussians: bool = True
    """Start from DA3's own Gaussians when the reconstruction has them (giant / nested models)."""
    densify: bool = False
    """Let splatfacto's strategy split, clone and prune Gaussians (needs CUDA)."""
    num_downscales: int = 0
    """Train at full resolution from step 0.  Splatfacto starts at 1/4 resolution (for
    ``resolution_schedule`` = 3000 steps per halving) to grow a scene from sparse points; this
    scene is complete at step 0, and refining it against downscaled images blurs it (held-out
    PSNR went down over the first steps), never reaching full resolution in 300 steps."""
    sh_degree: int = 3


class DA3SplatModel(SplatfactoModel):
    config: DA3SplatModelConfig

    def populate_modules(self):
        seed = self.seed_points
        if seed is None or len(seed[0]) == 0:
            raise ValueError("da3-splat needs seed points: use the da3-data dataparser (the default)")
        # build splatfacto's modules on a tiny stand-in, then replace the Gaussians
        self.seed_points = None
        self.config.random_init, self.config.num_random = True, 4
        if _lpips_weights_cached():
            super().populate_modules()
        else:  # never download from inside training: skip the metric instead
            CONSOLE.print("[yellow]da3-splat: LPIPS weights (AlexNet) are not cached; the LPIPS metric is skipped")
            import torchmetrics.image.lpip as lpip

            real = lpip.LearnedPerceptualImagePatchSimilarity
            lpip.LearnedPerceptualImagePatchSimilarity = lambda *a, **k: None
            try:
                super().populate_modules()
            finally:
                lpip.LearnedPerceptualImagePatchSimilarity = real
        self.seed_points = seed
        meta = self.kwargs.get("metadata") or {}
        dim_sh = (self.config.sh_degree + 1) ** 2
        if "da3_gaussians" in meta and self.config.use_da3_gaussians:
            g = meta["da3_gaussians"]
            n = len(g["means"])
            rest = torch.zeros(n, dim_sh - 1, 3)
            k = min(dim_sh - 1, g["features_rest"].shape[1])
            rest[:, :k] = g["features_rest"][:, :k]
            params = dict(g, features_rest=rest)
            CONSOLE.print(f"da3-splat: starting from DA3's {n:,} Gaussians")
        else:
            means = seed[0].float()
            n = len(means)
            if "da3_points3D_scale" in meta:
                scales = torch.log(meta["da3_points3D_scale"].clamp(min=1e-6))[:, None].repeat(1, 3)
                opac = meta["da3_points3D_opacity"].clamp(1e-4, 1 - 1e-4)[:, None]
            else:  # seed points from another dataparser: nearest-neighbour spacing
                from scipy.spatial import cKDTree

                dist = cKDTree(means.numpy()).query(means.numpy(), k=2)[0][:, 1]
                scales = torch.log(torch.from_numpy(np.maximum(dist, 1e-6)).float())[:, None].repeat(1, 3)
                opac = torch.full((n, 1), self.config.initial_opacity)
            shs = torch.zeros(n, dim_sh, 3)
            shs[:, 0, :] = torch.from_numpy(rgb_to_sh_dc(seed[1].cpu().numpy()))
            quats = torch.zeros(n, 4)
            quats[:, 0] = 1.0
            params = {"means": means, "scales": scales, "quats": quats, "features_dc": shs[:, 0, :],
                      "features_rest": shs[:, 1:, :], "opacities": torch.logit(opac)}
        for name, value in params.items():
            self.gauss_params[name] = torch.nn.Parameter(value.float().contiguous())

    # splatfacto's densification needs gsplat's CUDA info; without it the Gaussians stay as seeded
    def step_post_backward(self, step):
        if self.config.densify and torch.cuda.is_available():
            super().step_post_backward(step)

    def get_outputs(self, camera: Cameras) -> Dict[str, torch.Tensor]:
        if torch.cuda.is_available() and self.means.is_cuda:
            return super().get_outputs(camera)
        if self.training:
            c2w = self.camera_optimizer.apply_to_camera(camera)
        else:
            c2w = camera.camera_to_worlds
        viewmat = get_viewmat(c2w)[0]
        # splatfacto trains at a reduced resolution first: render at the size it compares against
        factor = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / factor)
        k = camera.get_intrinsics_matrices()[0].to(self.means)
        w, h = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(factor)
        self.last_size = (h, w)
        d = self.config.sh_degree
        if d > 0:
            used = min(self.step // self.config.sh_degree_interval, d)
            colors = torch.cat((self.features_dc[:, None, :], self.features_rest), 1)[:, : (used + 1) ** 2]
            colors = colors.permute(0, 2, 1)  # (N, 3, K)
        else:
            colors = torch.sigmoid(self.features_dc)
        background = self._get_background_color().to(self.means)
        out = rasterize(self.means, self.quats, torch.exp(self.scales), torch.sigmoid(self.opacities).squeeze(-1),
                        colors, viewmat.to(self.means), k, w, h, background=background)
        rgb = out.rgb.clamp(0.0, 1.0)
        depth = torch.where(out.alpha > 0, out.depth, out.depth.detach().max())
        return {"rgb": rgb, "depth": depth[..., None], "accumulation": out.alpha[..., None],
                "background": background.expand(h, w, 3) if not self.training else background}

    def get_image_metrics_and_images(self, outputs, batch):
        if self.lpips is not None:
            return super().get_image_metrics_and_images(outputs, batch)
        self.lpips = lambda a, b: torch.tensor(float("nan"))
        try:
            return super().get_image_metrics_and_images(outputs, batch)
        finally:
            self.lpips = None


da3_splat = MethodSpecification(
    config=TrainerConfig(
        method_name="da3-splat",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=300,
        steps_per_eval_all_images=1000,
        max_num_iterations=300,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=FullImageDatamanagerConfig(dataparser=DA3DataParserConfig(), cache_images="gpu",
                                                   cache_images_type="uint8"),
            model=DA3SplatModelConfig(),
        ),
        optimizers={
            "means": {"optimizer": AdamOptimizerConfig(lr=1.6e-5, eps=1e-15),
                      "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-7, max_steps=30000)},
            "features_dc": {"optimizer": AdamOptimizerConfig(lr=0.0025, eps=1e-15), "scheduler": None},
            "features_rest": {"optimizer": AdamOptimizerConfig(lr=0.0025 / 20, eps=1e-15), "scheduler": None},
            "opacities": {"optimizer": AdamOptimizerConfig(lr=0.01, eps=1e-15), "scheduler": None},
            "scales": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), "scheduler": None},
            "quats": {"optimizer": AdamOptimizerConfig(lr=0.001, eps=1e-15), "scheduler": None},
            "camera_opt": {"optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
                           "scheduler": ExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=30000,
                                                                        warmup_steps=1000, lr_pre_warmup=0)},
            "bilateral_grid": {"optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15),
                               "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=30000,
                                                                            warmup_steps=1000, lr_pre_warmup=0)},
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    ),
    description="Depth Anything 3 feed-forward Gaussian splats (seeded from DA3, CPU or GPU)",
)
