"""What defines a training run: :class:`TrainConfig` and the synthetic data distribution
:class:`SyntheticDataConfig` (frozen dataclasses, saved beside every checkpoint as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Tuple

from .. import losses as L
from ..errors import OptionError
from ..model.config import PATCH_SIZE, get_preset


GENERATORS = ("rooms", "randomized")


@dataclass(frozen=True)
class SyntheticDataConfig:
    """The synthetic training distribution.

    Scene ``i`` of the pool is generated from seed ``(seed, i)``: its kind cycles through
    ``kinds``, and the number of objects, field of view, camera arc and lighting are random.
    Each scene is rendered from ``views_per_scene`` cameras once and cached; a training sample
    takes a random subset of ``min_views``..``max_views`` of them; with ``max_view_gap`` > 0
    the subset is a run along the camera path whose consecutive members are at most that many
    camera positions apart (overlapping views), in random order.

    generator: "rooms" (:func:`~da3_plugins.core.synthetic.generate_scene`, the scenes above,
        rendered once at ``height`` x ``width``) or "randomized" (the domain-randomised scenes
        of :mod:`~da3_plugins.core.synthetic.randomized`: layouts, materials, lighting, cameras
        with a field of view in ``fov_range`` and photometry drawn per scene; views rendered
        on demand at each batch's size).
    sizes: "randomized" only: the (height, width) a batch is drawn at, one per step at random
        (several resolutions and aspect ratios); empty: ``height`` x ``width`` always.
    max_tokens: "randomized" only: the patch tokens (views x (H/14) x (W/14)) a process's batch
        may hold; a step at a large size takes fewer views (not below ``min_views``) and fewer
        samples (not below 1), so steps cost about the same at every size.  0: no limit.
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
    generator: str = "rooms"
    sizes: Tuple[Tuple[int, int], ...] = ()
    max_tokens: int = 0

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise OptionError(f"generator: expected one of {', '.join(GENERATORS)}, got {self.generator!r}")
        for h, w in self.sizes:
            if h <= 0 or w <= 0 or h % PATCH_SIZE or w % PATCH_SIZE:
                raise OptionError(f"sizes: expected sides that are positive multiples of {PATCH_SIZE}, got {h}x{w}")
        if (self.sizes or self.max_tokens) and self.generator != "randomized":
            raise OptionError("sizes, max_tokens: only the randomized generator renders at several sizes")
        if self.max_tokens < 0:
            raise OptionError(f"max_tokens: expected >= 0 (0: no limit), got {self.max_tokens}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v <= 0 or v % PATCH_SIZE:
                raise OptionError(f"{name}: expected a positive multiple of {PATCH_SIZE}, got {v}")
        if not 1 <= self.min_views <= self.max_views <= self.views_per_scene:
            raise OptionError(
                f"views: expected 1 <= min_views ({self.min_views}) <= max_views ({self.max_views}) "
                f"<= views_per_scene ({self.views_per_scene})")
        if self.scenes < 1:
            raise OptionError(f"scenes: expected >= 1, got {self.scenes}")
        if self.max_view_gap < 0:
            raise OptionError(f"max_view_gap: expected >= 0 (0: any subset), got {self.max_view_gap}")


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
        cosine decay to ``lr * min_lr_ratio``; ``batch_size`` is per process (data-parallel
        runs under torchrun have a global batch of processes x ``batch_size``).
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
                raise OptionError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise OptionError(f"lr: expected > 0, got {self.lr}")
        if not 0 <= self.pose_condition_prob <= 1:
            raise OptionError(f"pose_condition_prob: expected a probability, got {self.pose_condition_prob}")

    def to_json(self) -> dict:
        """Plain JSON-ready dict (nested configs as dicts, tuples as lists after dumping)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        """The config :meth:`to_json` gave (as read back from ``train_state.json``)."""
        data = dict(data)
        syn = dict(data.get("synthetic", {}))
        for key in ("kinds", "fov_range"):
            if key in syn:
                syn[key] = tuple(syn[key])
        if "sizes" in syn:
            syn["sizes"] = tuple(tuple(int(v) for v in hw) for hw in syn["sizes"])
        data["synthetic"] = SyntheticDataConfig(**syn)
        data["loss"] = L.LossWeights(**data.get("loss", {}))
        return cls(**data)


__all__ = ["GENERATORS", "SyntheticDataConfig", "TrainConfig"]
