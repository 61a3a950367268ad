"""Training and fine-tuning DA3 networks (torch).

One function, :func:`train`, driven by a typed :class:`TrainConfig`:

* the network is any preset: built with random weights (training from scratch) or loaded from
  a checkpoint (fine-tuning), optionally with the ViT backbone frozen (seeds, FAQ Q4: freeze
  the ViT when you have fewer than ~10k images, train the DualDPT head);
* data come from the synthetic scene generator (:class:`SyntheticData`: random layouts,
  textures, lighting and view counts) or from a folder of the user's scenes
  (:class:`~da3_plugins.core.datasets.FolderDataset`: images + depth + cameras, or COLMAP);
* ground truth is expressed in the first view's camera frame and normalised to unit mean
  point distance (:func:`prepare_targets`), and the paper's five losses are applied
  (:mod:`~da3_plugins.core.losses`), plus, when ``loss.correspondence`` > 0, a training aid of
  this project: one head per cross-view block is taught where each patch's surface lies in the
  first view (:func:`~da3_plugins.core.losses.correspondence_loss`; see the README's embedded
  model for why);
* with probability ``pose_condition_prob`` a batch is conditioned on its true cameras, so the
  camera encoder learns too (the paper uses 0.2);
* checkpoints are ``config.json`` + ``model.safetensors`` (the layout ``load_model`` reads) plus
  ``train_state.safetensors`` / ``train_state.json`` (optimizer moments, step, loss history), so a
  run resumes where it stopped and gives the same weights as an uninterrupted one;
* every random choice derives from ``seed`` and the step number: two runs with one config give
  the same weights.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses as L
from .camera import encode_pose
from .config import PATCH_SIZE, get_preset
from .preprocess import normalize
from .reconstruction import atomic_path

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class SyntheticDataConfig:
    """The synthetic training distribution.

    Scene ``i`` of the pool is generated from seed ``(seed, i)``: its kind cycles through
    ``kinds``, and the number of objects, field of view, camera arc and lighting are random.
    Each scene is rendered from ``views_per_scene`` cameras once and cached; a training sample
    takes a random subset of ``min_views``..``max_views`` of them; with ``max_view_gap`` > 0
    the subset is a run along the camera path whose consecutive members are at most that many
    camera positions apart (overlapping views), in random order.
    """

    height: int = 126
    width: int = 168
    scenes: int = 320
    views_per_scene: int = 8
    min_views: int = 2
    max_views: int = 4
    kinds: Tuple[str, ...] = ("room", "inside", "objects")
    fov_range: Tuple[float, float] = (45.0, 75.0)
    seed: int = 0
    max_view_gap: int = 0

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            v = getattr(self, name)
            if v <= 0 or v % PATCH_SIZE:
                raise ValueError(f"{name}: expected a positive multiple of {PATCH_SIZE}, got {v}")
        if not 1 <= self.min_views <= self.max_views <= self.views_per_scene:
            raise ValueError(
                f"views: expected 1 <= min_views ({self.min_views}) <= max_views ({self.max_views}) "
                f"<= views_per_scene ({self.views_per_scene})")
        if self.scenes < 1:
            raise ValueError(f"scenes: expected >= 1, got {self.scenes}")
        if self.max_view_gap < 0:
            raise ValueError(f"max_view_gap: expected >= 0 (0: any subset), got {self.max_view_gap}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (immutable; saved beside the checkpoint).

    preset: architecture of a run from scratch (ignored when ``init`` is given: the
        checkpoint's own preset is used).
    init: checkpoint folder / file / hub id to fine-tune from; None trains from scratch.
    data: a folder of the user's scenes (see ``docs/training-data.md``); None: synthetic.
    teacher: a model (folder / hub id / "embedded") whose depth, aligned to the data's sparse
        or noisy depth, becomes the dense label (teacher-student pseudo-labels); folder data only.
    freeze_backbone: train only the heads and camera modules.
    steps, batch_size, lr, weight_decay, warmup, min_lr_ratio: AdamW with linear warm-up and
        cosine decay to ``lr * min_lr_ratio``.
    backbone_lr_scale: learning-rate factor of the ViT backbone (e.g. 0.1 when fine-tuning).
    pose_condition_prob: fraction of batches conditioned on their true cameras.
    grad_clip: global gradient-norm clip (0: off).
    save_every: checkpoint interval in steps (the last step is always saved).
    """

    preset: str = "da3-tiny"
    init: Optional[str] = None
    data: Optional[str] = None
    teacher: Optional[str] = None
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)
    freeze_backbone: bool = False
    steps: int = 2500
    batch_size: int = 4
    lr: float = 3e-4
    backbone_lr_scale: float = 1.0
    weight_decay: float = 0.05
    warmup: int = 100
    min_lr_ratio: float = 0.05
    pose_condition_prob: float = 0.2
    grad_clip: float = 1.0
    loss: L.LossWeights = field(default_factory=L.LossWeights)
    save_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init is None:
            get_preset(self.preset)
        for name in ("steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if not 0 <= self.pose_condition_prob <= 1:
            raise ValueError(f"pose_condition_prob: expected a probability, got {self.pose_condition_prob}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        syn = dict(data.get("synthetic", {}))
        for key in ("kinds", "fov_range"):
            if key in syn:
                syn[key] = tuple(syn[key])
        data["synthetic"] = SyntheticDataConfig(**syn)
        data["loss"] = L.LossWeights(**data.get("loss", {}))
        return cls(**data)


# ----------------------------------------------------------------------------- data


@dataclass
class Batch:
    """B samples of N views each, at one size (numpy, as the data sources give them)."""

    images: np.ndarray  # (B, N, H, W, 3) uint8
    depth: np.ndarray  # (B, N, H, W) float32, 0 = unknown
    extrinsics: np.ndarray  # (B, N, 3, 4) OpenCV world-to-camera
    intrinsics: np.ndarray  # (B, N, 3, 3) pixels


class SyntheticData:
    """A lazily rendered pool of synthetic scenes (see :class:`SyntheticDataConfig`)."""

    def __init__(self, config: SyntheticDataConfig) -> None:
        self.config = config
        self._cache: Dict[int, object] = {}

    def __len__(self) -> int:
        return self.config.scenes

    def scene(self, index: int):
        """The :class:`~da3_plugins.core.synthetic.SyntheticScene` of pool entry ``index``."""
        from .synthetic import Lighting, SceneConfig, generate_scene

        if index in self._cache:
            return self._cache[index]
        c = self.config
        rng = np.random.default_rng([c.seed, index, 17])
        kind = c.kinds[index % len(c.kinds)]
        light_dir = rng.normal(0, 1, 3)
        light_dir[1] = abs(light_dir[1]) + 0.3  # from above (+y is down)
        lighting = Lighting(direction=tuple(light_dir), ambient=float(rng.uniform(0.2, 0.5)),
                            diffuse=float(rng.uniform(0.4, 0.8)))
        arc = {"room": rng.uniform(40, 120), "inside": rng.uniform(40, 120), "objects": rng.uniform(60, 360)}[kind]
        cfg = SceneConfig(kind=kind, num_views=c.views_per_scene, height=c.height, width=c.width,
                          fov_deg=float(rng.uniform(*c.fov_range)), seed=int(rng.integers(2**31)),
                          num_objects=int(rng.integers(2, 8)), arc_deg=float(arc), lighting=lighting)
        scene = generate_scene(cfg)
        self._cache[index] = scene
        return scene

    def batch(self, rng: np.random.Generator, batch_size: int) -> Batch:
        c = self.config
        n = int(rng.integers(c.min_views, c.max_views + 1))
        parts = []
        for _ in range(batch_size):
            s = self.scene(int(rng.integers(len(self))))
            if c.max_view_gap > 0:
                views = _view_run(rng, c.views_per_scene, n, c.max_view_gap)
            else:
                views = np.sort(rng.choice(c.views_per_scene, n, replace=False))
            rng.shuffle(views)  # any view can be the first (reference) one
            parts.append((s.images[views], s.depth[views], s.extrinsics[views][:, :3], s.intrinsics[views]))
        return Batch(*(np.stack(x) for x in zip(*parts)))


def _view_run(rng: np.random.Generator, total: int, n: int, max_gap: int) -> np.ndarray:
    """n increasing camera indices < total, consecutive ones 1..max_gap apart."""
    gaps = rng.integers(1, max_gap + 1, n - 1)
    while gaps.sum() > total - 1:  # too long for the path: shorten the largest gap
        gaps[gaps.argmax()] -= 1
    start = int(rng.integers(0, total - int(gaps.sum())))
    return start + np.concatenate(([0], np.cumsum(gaps))).astype(np.int64)


def fit_views(images: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, height: int, width: int):
    """Centre-crop to the aspect ratio of (height, width), then resize: images with area
    averaging (or bicubic when enlarging), depth by nearest neighbour (no mixed edges);
    intrinsics follow.  images (N, h, w, 3) uint8, depth (N, h, w), intrinsics (N, 3, 3)."""
    import cv2

    from .preprocess import _resize

    n, h, w = depth.shape
    target = width / height
    if w / h > target:  # too wide: crop columns
        cw, ch = int(round(h * target)), h
    else:
        cw, ch = w, int(round(w / target))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    k = intrinsics.astype(np.float64).copy()
    k[:, 0, 2] -= x0
    k[:, 1, 2] -= y0
    sx, sy = width / cw, height / ch
    k[:, 0] *= sx
    k[:, 1] *= sy
    out_i = np.stack([_resize(np.ascontiguousarray(im[y0:y0 + ch, x0:x0 + cw]), width, height, enlarge=sx >= 1)
                      for im in images])
    out_d = np.stack([cv2.resize(np.ascontiguousarray(d[y0:y0 + ch, x0:x0 + cw]), (width, height),
                                 interpolation=cv2.INTER_NEAREST) for d in depth.astype(np.float32)])
    return out_i, out_d, k


def pseudo_label_depth(teacher_depth: np.ndarray, measured: np.ndarray, min_points: int = 16,
                       seed: int = 0) -> np.ndarray:
    """Teacher-student labels: align a teacher's dense relative depth to sparse or noisy
    measured depth, view by view, with RANSAC least squares (scale and shift; inlier threshold
    from the median absolute deviation of the residuals: :func:`~.losses.ransac_scale_shift`).

    teacher_depth, measured: (N, H, W); measured is 0 where unknown.  Views with fewer than
    ``min_points`` measurements keep their measurements only (no label elsewhere: 0).
    Returns the aligned dense depth (N, H, W) float32, 0 where the alignment is not positive.
    """
    teacher = np.asarray(teacher_depth, np.float64)
    meas = np.asarray(measured, np.float64)
    if teacher.shape != meas.shape:
        raise ValueError(f"teacher_depth: shape {teacher.shape} differs from the measured depth {meas.shape}")
    out = np.zeros(teacher.shape, np.float32)
    for i in range(len(teacher)):
        ok = (meas[i] > 0) & np.isfinite(meas[i]) & np.isfinite(teacher[i])
        if ok.sum() < min_points:
            out[i] = np.where(ok, meas[i], 0)
            continue
        s, t, _ = L.ransac_scale_shift(torch.from_numpy(teacher[i]), torch.from_numpy(meas[i]),
                                       torch.from_numpy(ok), seed=seed + i)
        aligned = s * teacher[i] + t
        out[i] = np.where(aligned > 0, aligned, 0)
    return out


class FolderData:
    """Batches from a :class:`~da3_plugins.core.datasets.FolderDataset` of the user's scenes.

    With a ``teacher`` model, scenes whose depth is sparse (e.g. COLMAP points) or noisy get
    dense pseudo-labels: the teacher's depth aligned to the measurements
    (:func:`pseudo_label_depth`), as in the paper's teacher-student training.
    """

    def __init__(self, root: Union[str, os.PathLike], config: SyntheticDataConfig, teacher=None) -> None:
        from .datasets import FolderDataset

        self.dataset = FolderDataset(root)
        self.config = config
        self.teacher = teacher
        self._cache: Dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def _scene(self, index: int):
        if index not in self._cache:
            s = self.dataset[index]
            imgs, depth, k = fit_views(s.images, s.depth, s.intrinsics, self.config.height, self.config.width)
            if self.teacher is not None:
                rec = self.teacher.reconstruct(list(imgs), process_res=max(imgs.shape[1:3]),
                                               process_res_method="upper_bound_resize", seed=0)
                depth = pseudo_label_depth(rec.depth, depth)  # same size: sides are multiples of 14
            self._cache[index] = (imgs, depth, np.asarray(s.extrinsics, np.float64)[:, :3], k)
        return self._cache[index]

    def batch(self, rng: np.random.Generator, batch_size: int) -> Batch:
        c = self.config
        scenes = [self._scene(int(rng.integers(len(self)))) for _ in range(batch_size)]
        most = min(c.max_views, min(len(s[0]) for s in scenes))
        n = int(rng.integers(min(c.min_views, most), most + 1))
        parts = []
        for imgs, depth, ext, k in scenes:
            views = rng.choice(len(imgs), n, replace=False)
            parts.append((imgs[views], depth[views], ext[views], k[views]))
        return Batch(*(np.stack(x) for x in zip(*parts)))


# ----------------------------------------------------------------------------- targets


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


def prepare_targets(batch: Batch) -> Targets:
    """Ground truth in the first view's frame, scaled so that the mean distance of the valid
    points from the first camera is 1 (the paper's normalisation)."""
    from .geometry import cameras_to_ray_map

    b, n, h, w = batch.depth.shape
    ext = np.zeros((b, n, 4, 4))
    ext[..., :3, :] = batch.extrinsics
    ext[..., 3, 3] = 1
    rel = ext @ np.linalg.inv(ext[:, :1])  # world = view 0's camera
    k = batch.intrinsics.astype(np.float64)
    depth = torch.from_numpy(batch.depth.astype(np.float32))
    mask = depth > 0
    # points in view 0's frame: X = R^T (z K^-1 p) - R^T t
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    pix = np.stack((u, v, np.ones_like(u)), -1)  # (H, W, 3)
    cam = np.einsum("bnij,hwj->bnhwi", np.linalg.inv(k), pix) * batch.depth[..., None]
    c2w = np.linalg.inv(rel)
    pts = np.einsum("bnij,bnhwj->bnhwi", c2w[..., :3, :3], cam) + c2w[:, :, None, None, :3, 3]
    points = torch.from_numpy(pts.astype(np.float32))
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
                   w2c=torch.linalg.inv(c2w_t), intrinsics=kt, scale=scale)


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
        raise ValueError(f"{net.cfg.name}: training needs an any-view model (depth + ray heads and a camera decoder)")
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


def compute_losses(out: Dict[str, Tensor], tgt: Targets, weights: L.LossWeights) -> Dict[str, Tensor]:
    """The five loss terms (unweighted) of one batch."""
    h, w = tgt.depth.shape[-2:]
    ray = out["ray"]
    b, n = ray.shape[:2]
    ray_full = F.interpolate(ray.flatten(0, 1).permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1).unflatten(0, (b, n))
    return {
        "depth": L.depth_loss(out["depth"], tgt.depth, out["depth_conf"], tgt.mask, weights.lambda_c),
        "ray": L.ray_loss(ray, tgt.rays, tgt.ray_mask, conf=out["ray_conf"], lambda_c=weights.lambda_c),
        "point": L.point_loss(out["depth"], ray_full[..., :3], ray_full[..., 3:], tgt.points, tgt.mask),
        "camera": L.camera_loss(out["pose"], tgt.pose),
        "gradient": L.gradient_loss(out["depth"], tgt.depth, tgt.mask),
        **({"correspondence": _correspondence(out, tgt)} if weights.correspondence > 0 and "match_q" in out else {}),
    }


def _correspondence(out: Dict[str, Tensor], tgt: Targets) -> Tensor:
    idx, ok = L.correspondence_targets(tgt.points, tgt.mask, tgt.depth, tgt.intrinsics, PATCH_SIZE)
    terms = [L.correspondence_loss(q, k, idx, ok) for q, k in zip(out["match_q"], out["match_k"])]
    return torch.stack(terms).mean()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(folder: Path, model, optimizer, step: int, config: TrainConfig, history: List[dict]) -> None:
    """Weights in the hub layout, then the optimizer state and the run's progress."""
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    opt = optimizer.state_dict()
    tensors = {}
    for idx, st in opt["state"].items():
        for key, val in st.items():
            tensors[f"state.{idx}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
    with atomic_path(folder / STATE_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    meta = {"step": step, "config": config.to_json(), "param_groups": opt["param_groups"], "history": history}
    with atomic_path(folder / STATE_JSON) as tmp:
        tmp.write_text(json.dumps(meta, indent=1) + "\n")


def _load_state(folder: Path, optimizer) -> Tuple[int, List[dict]]:
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_WEIGHTS))
    state: Dict[int, dict] = {}
    for name, val in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta.get("history", []))


# ----------------------------------------------------------------------------- the loop


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    output: Path
    steps: int
    history: List[dict]  # one entry per logged step: {"step", "loss", terms...}
    seconds: float


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def build_model(cfg: TrainConfig):
    """The model a run starts from: random weights of ``preset`` or the ``init`` checkpoint."""
    from .model import load_model, random_model

    if cfg.init is not None:
        return load_model(cfg.init, device="cpu")
    return random_model(cfg.preset, seed=cfg.seed, device="cpu")


def train(cfg: TrainConfig, output: Union[str, os.PathLike], *, resume: bool = False, progress: bool = True,
          log: Optional[Callable[[dict], None]] = None, device: Union[str, torch.device, None] = "cpu",
          data=None) -> TrainResult:
    """Train or fine-tune (see the module docs); checkpoints go to ``output``.

    resume: continue the run saved in ``output`` (its config must equal ``cfg`` apart from
        ``steps``); without it an ``output`` that already holds a run is an error.
    data: a ready data source with ``batch(rng, batch_size)`` (default: from ``cfg``).
    """
    from .model import load_model

    output = Path(output)
    has_run = (output / STATE_JSON).is_file()
    if has_run and not resume:
        raise FileExistsError(f"{output}: already holds a training run; pass resume=True (--resume) or another folder")
    if resume and not has_run:
        raise FileNotFoundError(f"{output}: no training run to resume ({STATE_JSON} missing)")
    output.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or "cpu")

    torch.manual_seed(cfg.seed)
    model = load_model(output, device="cpu") if resume else build_model(cfg)
    net = model.net.to(dev)
    if net.cfg.head.kind != "dualdpt" or net.cam_dec is None:
        raise ValueError(f"{model.preset}: only any-view presets (depth + ray + camera) can be trained here")
    net.train()
    backbone_params = [p for p in net.backbone.parameters()]
    ids = {id(p) for p in backbone_params}
    other = [p for p in net.parameters() if id(p) not in ids]
    if cfg.freeze_backbone:
        for p in backbone_params:
            p.requires_grad_(False)
        net.backbone.eval()
        groups = [{"params": other, "lr": cfg.lr, "base_lr": cfg.lr}]
    else:
        blr = cfg.lr * cfg.backbone_lr_scale
        groups = [{"params": backbone_params, "lr": blr, "base_lr": blr},
                  {"params": other, "lr": cfg.lr, "base_lr": cfg.lr}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history = (0, [])
    if resume:
        saved = json.loads((output / STATE_JSON).read_text())["config"]
        mine = json.loads(json.dumps(cfg.to_json()))
        diff = [k for k in mine if k != "steps" and mine[k] != saved.get(k)]
        if diff:
            raise ValueError(f"{output}: the saved run has a different config ({', '.join(diff)}); resume needs the same one")
        start, history = _load_state(output, optimizer)

    if data is None:
        if cfg.data:
            teacher = load_model(cfg.teacher, device=dev) if cfg.teacher else None
            data = FolderData(cfg.data, cfg.synthetic, teacher=teacher)
        else:
            if cfg.teacher:
                raise ValueError("teacher: pseudo-labels are for your own data (--data); synthetic depth is exact")
            data = SyntheticData(cfg.synthetic)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {model.preset}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    step = start
    for step in range(start, cfg.steps):
        rng = np.random.default_rng([cfg.seed, step])
        batch = data.batch(rng, cfg.batch_size)
        tgt = prepare_targets(batch)
        cond = rng.random() < cfg.pose_condition_prob
        factor = _lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        out = forward_for_training(net, tgt.images.to(dev), tgt.w2c.to(dev) if cond else None,
                                   tgt.intrinsics.to(dev) if cond else None, match_heads=cfg.loss.correspondence > 0)
        terms = compute_losses(out, _to(tgt, dev), cfg.loss)
        loss = L.total_loss(terms, cfg.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step}: the loss is not finite ({float(loss)}); lower lr (now {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        entry = {"step": step + 1, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
        history.append(entry)
        if log is not None:
            log(entry)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", depth=f"{entry['depth']:.3f}", cam=f"{entry['camera']:.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            model.net.eval()
            save_checkpoint(output, model, optimizer, step + 1, cfg, history)
            net.train()
            if cfg.freeze_backbone:
                net.backbone.eval()
    if bar is not None:
        bar.close()
    model.net.eval()
    return TrainResult(output=output, steps=step + 1 if cfg.steps > start else start, history=history,
                       seconds=time.perf_counter() - t0)


def _to(t: Targets, dev: torch.device) -> Targets:
    if dev.type == "cpu":
        return t
    return Targets(**{k: v.to(dev) for k, v in vars(t).items()})


__all__ = [
    "SyntheticDataConfig", "TrainConfig", "Batch", "SyntheticData", "FolderData", "fit_views", "pseudo_label_depth",
    "Targets",
    "prepare_targets", "forward_for_training", "compute_losses", "save_checkpoint",
    "TrainResult", "build_model", "train",
]
