"""The training loop (the trainer layer): :func:`train` builds or loads the model, sets up
AdamW with warm-up and cosine decay, draws a batch per step from a data source
(:mod:`.data`), runs one step (:mod:`.step`) and saves checkpoints that a run resumes from.

A checkpoint is ``config.json`` + ``model.safetensors`` (the layout ``load_model`` reads) plus
``train_state.safetensors`` / ``train_state.json`` (optimizer moments, step, loss history).
Every random choice derives from ``seed`` and the step number, so a resumed run gives the same
weights as an uninterrupted one.

Data-parallel training: when ``train`` runs in a process group of more than one process
(``torchrun``; :func:`distributed_from_env` joins it), the step runs under
:class:`~torch.nn.parallel.DistributedDataParallel`.  ``batch_size`` is per process: every
process draws the same plan of the global batch of ``world_size * batch_size`` samples from
``default_rng([seed, step])`` and loads its own slice (:mod:`.data`), so the pose-conditioning
coin and the view count agree; the masked loss means divide by the whole batch's count of
valid elements over ``world_size`` (counts summed over the processes), so that the mean of the
processes' losses, which DDP's averaged gradients follow, is the global batch's loss.
Gradient clipping acts on the averaged gradients.  Process 0 alone writes checkpoints, calls
``log`` and shows the progress bar; the others wait at a barrier after each save.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from .. import losses as L
from ..errors import OptionError
from ..reconstruction import atomic_path
from .config import TrainConfig
from .data import FolderData, RandomizedData, SyntheticData
from .step import TrainingForward, compute_losses, prepare_targets

STATE_WEIGHTS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def save_checkpoint(folder: Path, model, optimizer, step: int, config: TrainConfig, history: List[dict],
                    world_size: int = 1) -> None:
    """Weights in the hub layout, then the optimizer state and the run's progress
    (``world_size``: processes of the run; its global batch is ``world_size * batch_size``)."""
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    opt = optimizer.state_dict()
    tensors = {}
    for idx, st in opt["state"].items():
        for key, val in st.items():
            tensors[f"state.{idx}.{key}"] = torch.as_tensor(val).detach().cpu().contiguous()
    with atomic_path(folder / STATE_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    meta = {"step": step, "config": config.to_json(), "param_groups": opt["param_groups"], "history": history,
            "world_size": world_size}
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


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run (see :func:`distributed_from_env`)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "gloo" (CPU) or "nccl" (CUDA)
    device: torch.device  # where this process trains (CUDA: the GPU of its local rank)


def torchrun_env() -> Optional[Tuple[int, int, int]]:
    """(rank, world_size, local_rank) from the variables ``torchrun`` sets (RANK, WORLD_SIZE,
    LOCAL_RANK) when it started more than one process; None otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise OptionError("WORLD_SIZE > 1 needs integer RANK and LOCAL_RANK variables (start the run with "
                          "torchrun)") from None


@contextmanager
def distributed_from_env(device: Union[str, torch.device, None] = "cpu") -> Iterator[Optional[Distributed]]:
    """Under ``torchrun`` with WORLD_SIZE > 1: join the process group from the environment
    (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE): gloo on the CPU, nccl on CUDA, where each
    process takes the GPU of its LOCAL_RANK; yield this process's :class:`Distributed` and
    leave the group at the end, also on errors.  Otherwise yield None (one process)."""
    env = torchrun_env()
    if env is None:
        yield None
        return
    rank, world, local = env
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    elif dev.type == "cpu":
        backend = "gloo"
    else:
        raise OptionError(f"device {dev.type}: data-parallel training runs on cpu (gloo) or cuda (nccl)")
    if not dist.is_available():
        raise OptionError("WORLD_SIZE > 1: this torch build has no torch.distributed")
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    try:
        yield Distributed(rank=rank, world_size=world, local_rank=local, backend=backend, device=dev)
    finally:
        dist.destroy_process_group()


def _process_group() -> Tuple[int, int]:
    """(rank, world_size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _whole_batch_divisor(world_size: int):
    """A loss divisor (:mod:`~da3_plugins.core.losses`) for data-parallel training: the count of
    valid elements summed over the processes (at least 1), over ``world_size``."""

    def divisor(count: torch.Tensor) -> torch.Tensor:
        total = count.detach().clone()
        dist.all_reduce(total)
        return total.clamp(min=1.0) / world_size

    return divisor


def build_model(cfg: TrainConfig):
    """The model a run starts from: random weights of ``preset`` or the ``init`` checkpoint."""
    from ..model.da3model import load_model, random_model

    if cfg.init is not None:
        return load_model(cfg.init, device="cpu", dtype="fp32")  # training runs in fp32, whatever "auto" picks
    return random_model(cfg.preset, seed=cfg.seed, device="cpu")


@torch.enable_grad()  # trains even when called inside torch.no_grad() (a notebook, a test)
def train(cfg: TrainConfig, output: Union[str, os.PathLike], *, resume: bool = False, progress: bool = True,
          log: Optional[Callable[[dict], None]] = None, device: Union[str, torch.device, None] = "cpu",
          data=None) -> TrainResult:
    """Train or fine-tune (see the module docs); checkpoints go to ``output``.

    resume: continue the run saved in ``output`` (its config must equal ``cfg`` apart from
        ``steps``, and its global batch ``world_size * batch_size`` must be the same); without it
        an ``output`` that already holds a run is an error.
    data: a ready data source with ``batch(rng, batch_size)`` (default: from ``cfg``); in a
        process group of several processes it is called as
        ``batch(rng, batch_size, rank=rank, world_size=world_size)`` (see :mod:`.data`).
    Under data parallelism (see the module docs) every process calls this with the same
    arguments; ``log`` and ``progress`` act on process 0 only, the returned history (global
    batch losses) is every process's.
    """
    from ..model.da3model import load_model

    rank, world = _process_group()
    lead = rank == 0
    output = Path(output)
    has_run = (output / STATE_JSON).is_file()
    if has_run and not resume:
        raise FileExistsError(f"{output}: already holds a training run; pass resume=True (--resume) or another folder")
    if resume and not has_run:
        raise FileNotFoundError(f"{output}: no training run to resume ({STATE_JSON} missing)")
    if lead:
        output.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or "cpu")

    torch.manual_seed(cfg.seed)
    model = load_model(output, device="cpu", dtype="fp32") if resume else build_model(cfg)
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
        meta = json.loads((output / STATE_JSON).read_text())
        # the saved config with today's defaults for fields added since (e.g. synthetic.generator)
        saved = json.loads(json.dumps(TrainConfig.from_json(meta["config"]).to_json()))
        mine = json.loads(json.dumps(cfg.to_json()))
        diff = [k for k in mine if k not in ("steps", "batch_size") and mine[k] != saved.get(k)]
        if diff:
            raise OptionError(f"{output}: the saved run has a different config ({', '.join(diff)}); resume needs the same one")
        saved_world = int(meta.get("world_size", 1))
        if saved_world * saved["batch_size"] != world * cfg.batch_size:
            raise OptionError(
                f"{output}: the saved run has a different config (batch_size: a global batch of "
                f"{saved_world * saved['batch_size']} = {saved_world} x {saved['batch_size']}, now {world} x "
                f"{cfg.batch_size}); resume needs the same global batch")
        start, history = _load_state(output, optimizer)

    forward = TrainingForward(net)
    divisor = None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # unused parameters: the camera encoder on steps without pose conditioning
        forward = DistributedDataParallel(forward, device_ids=[dev] if dev.type == "cuda" else None,
                                          find_unused_parameters=True)
        divisor = _whole_batch_divisor(world)

    if data is None:
        if cfg.data:
            teacher = load_model(cfg.teacher, device=dev) if cfg.teacher else None
            data = FolderData(cfg.data, cfg.synthetic, teacher=teacher)
        else:
            if cfg.teacher:
                raise OptionError("teacher: pseudo-labels are for your own data (--data); synthetic depth is exact")
            data = RandomizedData(cfg.synthetic) if cfg.synthetic.generator == "randomized" else SyntheticData(cfg.synthetic)
    bar = None
    if progress and lead:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {model.preset}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    step = start
    for step in range(start, cfg.steps):
        rng = np.random.default_rng([cfg.seed, step])
        if world > 1:
            batch = data.batch(rng, cfg.batch_size, rank=rank, world_size=world)
        else:
            batch = data.batch(rng, cfg.batch_size)
        tgt = prepare_targets(batch)
        cond = rng.random() < cfg.pose_condition_prob
        factor = _lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        out = forward(tgt.images.to(dev), tgt.w2c.to(dev) if cond else None, tgt.intrinsics.to(dev) if cond else None,
                      match_heads=cfg.loss.correspondence > 0)
        terms = compute_losses(out, tgt.to(dev), cfg.loss, divisor)
        loss = L.total_loss(terms, cfg.loss)
        # the global batch's loss and terms: the mean over the processes
        values = torch.stack([loss.detach(), *(v.detach() for v in terms.values())])
        if world > 1:
            dist.all_reduce(values)
            values = values / world
        values = values.tolist()
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"step {step}: the loss is not finite ({values[0]}); lower lr (now {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: the gradients are averaged over the processes here
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in net.parameters() if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        entry = {"step": step + 1, **dict(zip(["loss", *terms], values))}
        history.append(entry)
        if log is not None and lead:
            log(entry)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", depth=f"{entry['depth']:.3f}", cam=f"{entry['camera']:.3f}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            model.net.eval()
            if lead:
                save_checkpoint(output, model, optimizer, step + 1, cfg, history, world_size=world)
            if world > 1:
                dist.barrier()  # the others wait until the checkpoint is written
            net.train()
            if cfg.freeze_backbone:
                net.backbone.eval()
    if bar is not None:
        bar.close()
    model.net.eval()
    return TrainResult(output=output, steps=step + 1 if cfg.steps > start else start, history=history,
                       seconds=time.perf_counter() - t0)


__all__ = ["STATE_WEIGHTS", "STATE_JSON", "save_checkpoint", "TrainResult", "build_model", "train", "Distributed",
           "torchrun_env", "distributed_from_env"]
