"""The training loop (the trainer layer): :func:`train` builds or loads the model, sets up
AdamW with warm-up and cosine decay, draws a batch per step from a data source
(:mod:`.data`), runs one step (:mod:`.step`) and saves checkpoints that a run resumes from.

A checkpoint is ``config.json`` + ``model.safetensors`` (the layout ``load_model`` reads) plus
``train_state.safetensors`` / ``train_state.json`` (optimizer moments, step, loss history).
Every random choice derives from ``seed`` and the step number, so a resumed run gives the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .. import losses as L
from ..errors import OptionError
from ..reconstruction import atomic_path
from .config import TrainConfig
from .data import FolderData, SyntheticData
from .step import compute_losses, forward_for_training, prepare_targets

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


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
    """Restore ``optimizer`` from a checkpoint; returns the saved step and loss history."""
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_JSON).read_text())
    tensors = load_file(str(folder / STATE_WEIGHTS))
    state: Dict[int, dict] = {}
    for name, val in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), list(meta.get("history", []))


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    output: Path
    steps: int
    history: List[dict]  # one entry per logged step: {"step", "loss", terms...}
    seconds: float


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning-rate factor of ``step``: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def build_model(cfg: TrainConfig):
    """The model a run starts from: random weights of ``preset`` or the ``init`` checkpoint."""
    from ..model.da3model import load_model, random_model

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
    from ..model.da3model import load_model

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
        raise OptionError(f"{model.preset}: only any-view presets (depth + ray + camera) can be trained here")
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
            raise OptionError(f"{output}: the saved run has a different config ({', '.join(diff)}); resume needs the same one")
        start, history = _load_state(output, optimizer)

    if data is None:
        if cfg.data:
            teacher = load_model(cfg.teacher, device=dev) if cfg.teacher else None
            data = FolderData(cfg.data, cfg.synthetic, teacher=teacher)
        else:
            if cfg.teacher:
                raise OptionError("teacher: pseudo-labels are for your own data (--data); synthetic depth is exact")
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
        terms = compute_losses(out, tgt.to(dev), cfg.loss)
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


__all__ = ["STATE_WEIGHTS", "STATE_JSON", "save_checkpoint", "TrainResult", "build_model", "train"]
