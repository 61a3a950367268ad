"""``da3-data``: a COLMAP-free nerfstudio dataparser that gets cameras, seed points and depth
from Depth Anything 3.

    ns-train splatfacto da3-data --data photos/ --model /path/to/DA3-MODEL
    ns-train nerfacto   da3-data --data scene.npz          # a saved DA3 scene
    ns-train nerfacto   da3-data --data da3-out/           # da3p's output folder (scene/ or scene.npz)

``--data`` is a folder of images, a video, a scene (``.npz`` or a scene folder) written by
``da3p reconstruct``, or a folder holding one as ``scene/`` or ``scene.npz`` (such a folder is
read as that scene even when it holds pictures too).  DA3 runs once through the core and its result is cached on disk under
``<data>/.da3_cache/<key>/`` (or ``--cache-dir``), keyed by the images (names, sizes, times),
the model and the options, so a second run does not recompute.  Poses go through the core's
conventions module (OpenGL camera-to-world), then nerfstudio's usual orientation, centring and
scaling; the seed points and depth maps are transformed the same way.

This module does not import nerfstudio's trainer (a registered dataparser must not).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Literal, Optional, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras import camera_utils
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox
from nerfstudio.data.utils.dataparsers_utils import get_train_eval_split_fraction
from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from da3_plugins.core import conventions as conv
from da3_plugins.core.model_source import DEFAULT_MODEL
from da3_plugins.core.options import ReconstructOptions
from da3_plugins.core.reconstruction import Reconstruction
from da3_plugins.core.scene_io import SCENE_JSON, find_scene
from da3_plugins.core.seeds import dedupe_views, seed_scales

CACHE_VERSION = 2


_DEFAULTS = ReconstructOptions()
OPTION_FIELDS = tuple(f.name for f in ReconstructOptions.option_fields() if f.name != "align_to_input_ext_scale")
"""The reconstruction options the dataparser exposes (known poses are not an input here)."""


@dataclass
class DA3DataParserConfig(DataParserConfig):
    """Cameras, seed points and depth from Depth Anything 3 instead of COLMAP."""

    _target: Type = field(default_factory=lambda: DA3DataParser)
    data: Path = Path()
    """A folder of images, a video, a DA3 scene (.npz or scene folder), or a folder holding scene/ or scene.npz."""
    model: str = DEFAULT_MODEL
    """DA3 model: a folder with config.json + model.safetensors, a .safetensors file, or a hub id."""
    device: str = "auto"
    """Where DA3 runs (auto, cpu, cuda, mps)."""
    # the reconstruction options: the fields of ReconstructOptions (defaults from it)
    process_res: int = _DEFAULTS.process_res
    """DA3 input resolution (longest side)."""
    process_res_method: str = _DEFAULTS.process_res_method
    """How photos are resized or cropped (upper_bound_resize, upper_bound_crop, lower_bound_*)."""
    ref_view_strategy: str = _DEFAULTS.ref_view_strategy
    """Reference view (first, middle, saddle_balanced, saddle_sim_range)."""
    use_ray_pose: bool = _DEFAULTS.use_ray_pose
    """Cameras from the ray map instead of the camera head."""
    infer_gs: bool = _DEFAULTS.infer_gs
    """Also predict DA3's 3D Gaussians (giant / nested models); da3-splat starts from them."""
    max_views_per_pass: Optional[int] = _DEFAULTS.max_views_per_pass
    """Views per network pass; more run in overlapping chunks (default: from memory)."""
    chunk_overlap: Optional[int] = _DEFAULTS.chunk_overlap
    """Views shared by consecutive chunks (default: from the chunk size)."""
    seed: Optional[int] = _DEFAULTS.seed
    """Seeds DA3's random parts (repeatable results)."""
    precision: Optional[str] = _DEFAULTS.precision
    """Backbone compute precision (auto, fp32, bf16, fp16, int8; default None: auto, see core/precision.py;
    fp32 is exact)."""
    loop_closure: str = _DEFAULTS.loop_closure
    """Long inputs: find where the camera returns and close the loop (auto, off)."""
    fast_decode: bool = _DEFAULTS.fast_decode
    """Decode JPEGs at a reduced scale (faster; pixels differ slightly from the official preprocessing)."""
    skip_unreadable: bool = _DEFAULTS.skip_unreadable
    """Leave out input files that cannot be read instead of stopping."""
    fps: float = 2.0
    """Frames per second sampled from a video."""
    cache_dir: Optional[Path] = None
    """Where DA3 results are cached (default: <data>/.da3_cache, or beside the video/scene file)."""
    conf_threshold: float = -1.0
    """Seed points need confidence >= this; -1 uses the official percentile rule."""
    max_points: int = 200_000
    """At most this many seed points (a seeded random subset)."""
    dedupe_views: bool = True
    """Keep each surface patch once: drop a view's seed point where another view sees the same
    surface more finely (every view's depth map covers the overlap again; the copies are
    redundant and, drawn as splats, the nearest copy occludes its neighbours)."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "up"
    center_method: Literal["poses", "focus", "none"] = "poses"
    auto_scale_poses: bool = True
    scale_factor: float = 1.0
    scene_scale: float = 1.0
    train_split_fraction: float = 0.9
    load_depth: bool = True
    """Write DA3's depth maps as 16-bit PNGs and pass them on for depth-supervised methods."""


    def reconstruct_options(self) -> ReconstructOptions:
        """The :class:`ReconstructOptions` of this config (validated: OptionError names the field)."""
        return ReconstructOptions(**{name: getattr(self, name) for name in OPTION_FIELDS})


class DA3DataParser(DataParser):
    config: DA3DataParserConfig

    # ------------------------------------------------------------------ DA3 result (cached)

    def _scene(self) -> Optional[Path]:
        """The saved scene ``--data`` names (a file, a scene folder, a folder holding one), or None."""
        data = Path(self.config.data)
        if data.is_file() and data.suffix != ".npz" and data.name != SCENE_JSON:
            return None  # a video
        return find_scene(data)

    def _cache_root(self) -> Path:
        data = Path(self.config.data)
        if self.config.cache_dir is not None:
            return Path(self.config.cache_dir)
        scene = self._scene()
        if scene is not None:  # beside the scene, never inside a scene folder
            return scene.parent / ".da3_cache"
        return (data if data.is_dir() else data.parent) / ".da3_cache"

    def _key(self, files: List[Path]) -> str:
        h = hashlib.sha1()
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        c = self.config
        # the precision as resolved here (auto means bf16 on one machine, fp32 on another)
        from da3_plugins.core.model.loading import resolve_device
        from da3_plugins.core.precision import resolve_precision

        options = c.reconstruct_options()
        options = replace(options, precision=resolve_precision(options.precision, resolve_device(c.device)))
        h.update(json.dumps([CACHE_VERSION, c.model, options.cache_key(), c.fps]).encode())
        return h.hexdigest()[:16]

    def reconstruction(self) -> "tuple[Reconstruction, List[Path], bool]":
        """-> (rec, image files nerfstudio reads, whether intrinsics are for the original photos)."""
        from da3_plugins.core.images import IMAGE_EXTENSIONS, list_images

        data = Path(self.config.data)
        if not data.exists():
            raise ValueError(f"--data {data}: no such file or folder")
        scene = self._scene()
        if scene is not None or data.suffix == ".npz":
            rec = Reconstruction.load(scene or data)  # SceneFileError names the file or folder
            return rec, self._write_images(rec, self._cache_root() / f"{(scene or data).stem}-images"), False
        if data.is_dir():
            files = list_images(data)
            if not files:
                raise ValueError(f"--data {data}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS[:5])} ...)")
        else:
            files = [data]  # a video
        folder = self._cache_root() / self._key(files)
        scene = folder / "scene.npz"
        if scene.is_file():
            rec = Reconstruction.load(scene)
        else:
            from da3_plugins.core import load_model

            model = load_model(self.config.model, device=self.config.device)
            if not model.predicts_cameras:
                raise ValueError(f"--model {self.config.model}: {model.preset} predicts no cameras; "
                                 "use an any-view model (da3-small/base/large/giant or the nested model)")
            rec = model.reconstruct([str(data)] if not data.is_dir() else [str(f) for f in files],
                                    self.config.reconstruct_options(), fps=self.config.fps)
            rec.save(scene)
        if data.is_dir():
            return rec, files, True
        return rec, self._write_images(rec, folder / "images"), False

    @staticmethod
    def _write_images(rec: Reconstruction, folder: Path) -> List[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for name, img in zip(rec.image_names, rec.images):
            path = folder / f"{name}.png"
            if not path.is_file():
                Image.fromarray(img).save(path)
            out.append(path)
        return out

    # ------------------------------------------------------------------ nerfstudio outputs

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        c = self.config
        rec, files, original = self.reconstruction()
        if rec.camera_source == "none":
            raise ValueError(f"--data {c.data}: this scene has no cameras (a monocular model made it)")
        if original:
            k = rec.intrinsics_original
            hw = rec.original_sizes
        else:
            k = rec.intrinsics
            hw = np.tile([rec.height, rec.width], (len(rec), 1))

        poses = torch.from_numpy(conv.opencv_w2c_to_opengl_c2w(rec.extrinsics)).float()  # (N, 4, 4)
        poses, transform = camera_utils.auto_orient_and_center_poses(
            poses, method=c.orientation_method, center_method=c.center_method)
        scale = 1.0
        if c.auto_scale_poses:
            scale /= float(torch.max(torch.abs(poses[:, :3, 3])))
        scale *= c.scale_factor
        poses[:, :3, 3] *= scale

        i_train, i_eval = get_train_eval_split_fraction(files, c.train_split_fraction)
        if split == "train":
            indices = i_train
        elif split in ("val", "test"):
            indices = i_eval
        else:
            raise ValueError(f"unknown dataparser split {split}")
        idx = torch.tensor(indices, dtype=torch.long)

        aabb = c.scene_scale
        cameras = Cameras(
            fx=torch.from_numpy(k[:, 0, 0]).float()[idx, None], fy=torch.from_numpy(k[:, 1, 1]).float()[idx, None],
            cx=torch.from_numpy(k[:, 0, 2]).float()[idx, None], cy=torch.from_numpy(k[:, 1, 2]).float()[idx, None],
            height=torch.from_numpy(hw[:, 0]).int()[idx, None], width=torch.from_numpy(hw[:, 1]).int()[idx, None],
            camera_to_worlds=poses[idx], camera_type=CameraType.PERSPECTIVE)

        thr = rec.default_conf_threshold() if c.conf_threshold < 0 else c.conf_threshold
        valid = rec.valid_mask(thr)
        cloud = rec.points(conf_threshold=thr)
        pts = cloud.positions.astype(np.float64)
        colors, conf, view = cloud.colors, cloud.confidence, cloud.view
        # the part of the full-density cloud that is left: after the confidence threshold ...
        density = len(pts) / max(int(rec.valid_mask().sum()), 1)
        if c.dedupe_views and rec.num_views > 1:
            keep = dedupe_views(pts, view, rec.depth, rec.extrinsics, rec.intrinsics, valid)
            pts, colors, conf, view = pts[keep], colors[keep], conf[keep], view[keep]
        if len(pts) > c.max_points:  # ... and after max_points (of the points that are not redundant)
            density *= c.max_points / len(pts)
            pick = np.sort(np.random.default_rng(0).choice(len(pts), c.max_points, replace=False))
            pts, colors, conf, view = pts[pick], colors[pick], conf[pick], view[pick]
        # a Gaussian per point, about a pixel wide at its depth in the view that saw it
        scales = seed_scales(pts, view, rec.extrinsics, rec.intrinsics, density)
        opacity = np.clip(1.0 - 1.0 / np.maximum(conf, 1.0), 0.05, 0.95) if rec.conf is not None else np.full(len(pts), 0.9)
        pts_t = torch.from_numpy(pts).float()
        pts_t = (torch.cat([pts_t, torch.ones_like(pts_t[:, :1])], -1) @ transform.T) * scale
        metadata = {"points3D_xyz": pts_t, "points3D_rgb": torch.from_numpy(colors.astype(np.uint8)),
                     # for da3-splat: a Gaussian per seed point, about a pixel wide where it was
                     # seen, opacity from DA3's confidence
                     "da3_points3D_scale": torch.from_numpy(scales).float() * scale,
                     "da3_points3D_opacity": torch.from_numpy(opacity).float()}
        if rec.gaussians is not None:
            metadata["da3_gaussians"] = _transform_gaussians(rec.gaussians, transform.double().numpy(), scale)
        if c.load_depth:
            depth_files, unit = self._write_depth(rec)
            metadata["depth_filenames"] = [depth_files[i] for i in indices]
            metadata["depth_unit_scale_factor"] = unit

        return DataparserOutputs(
            image_filenames=[Path(files[i]) for i in indices],
            cameras=cameras,
            scene_box=SceneBox(aabb=torch.tensor([[-aabb] * 3, [aabb] * 3], dtype=torch.float32)),
            dataparser_scale=scale,
            dataparser_transform=transform,
            metadata=metadata,
        )

    def _write_depth(self, rec: Reconstruction):
        from da3_plugins.core.export.depth_images import default_depth_unit, depth_to_uint16, largest_depth

        key = hashlib.sha1()
        for depth in rec.depth:  # view by view: a scene of memory maps stays on disk
            key.update(np.ascontiguousarray(depth).tobytes())
        folder = self._cache_root() / f"depth-{key.hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        unit = default_depth_unit(largest_depth(rec, drop_sky=False))
        paths = []
        for name, depth in zip(rec.image_names, rec.depth):
            path = folder / f"{name}.png"
            if not path.is_file():
                q, _ = depth_to_uint16(depth, unit)
                Image.fromarray(q).save(path)
            paths.append(path)
        return paths, unit


def _transform_gaussians(gs, transform: np.ndarray, scale: float) -> dict:
    """DA3's Gaussians carried into the dataparser's frame (x -> scale * (T x)), as tensors in
    splatfacto's parameterisation (log scales, logit opacities, SH as (G, K, 3))."""
    from da3_plugins.core.pipeline import transform_gaussians

    moved = transform_gaussians(gs, transform[:, :3], transform[:, 3], 1.0)
    harm = torch.from_numpy(moved.harmonics).permute(0, 2, 1).contiguous()  # (G, K, 3)
    return {
        "means": torch.from_numpy(moved.means).float() * scale,
        "scales": torch.log(torch.from_numpy(moved.scales).float() * scale),
        "quats": torch.from_numpy(moved.rotations).float(),
        "opacities": torch.logit(torch.from_numpy(moved.opacities).float().clamp(1e-4, 1 - 1e-4))[:, None],
        "features_dc": harm[:, 0].float(),
        "features_rest": harm[:, 1:].float(),
    }


da3_data = DataParserSpecification(config=DA3DataParserConfig(),
                                   description="Depth Anything 3: cameras, seed points and depth without COLMAP")
