"""Data-parallel training (``da3p train`` under torchrun, DDP on the CPU with gloo): the global
batch plan and its shards, the loss normalised over the whole batch, and the proof: two
processes with batches of 2 train the same weights, log the same losses and resume as one
process with a batch of 4.

torchrun's rendezvous store listens on every interface (it has no bind-address option), so the
torchrun runs here happen in a private network namespace (``unshare -rn``) whose only
interface is the loopback: nothing they open is reachable from outside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from da3_plugins.core.losses import LossWeights
from da3_plugins.core.training import (
    FolderData,
    SyntheticData,
    SyntheticDataConfig,
    compute_losses,
    forward_for_training,
    prepare_targets,
    torchrun_env,
)

# 3 steps of da3-tiny at 42x56: seed 1 gives an unconditioned step (the camera encoder unused)
# then two conditioned ones, and view counts 2, 3, 3; the attention-matching aid is on
TRAIN = ["train", "--size", "42x56", "--scenes", "4", "--views", "2-3", "--warmup", "2", "--seed", "1",
         "--pose-condition", "0.5", "--correspondence", "1", "--threads", "1", "--progress", "none"]
TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_USE_AGENT_STORE")

# brings the namespace's loopback up (SIOCGIFFLAGS / SIOCSIFFLAGS | IFF_UP), then runs python
_LOOPBACK_UP = """
import fcntl, os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
s.close()
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    return env


def _private_network() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rn", sys.executable, "-c", _LOOPBACK_UP, "-c", "pass"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """``da3p train`` in 2 processes under torchrun (gloo), in a private network namespace
    (a fresh one: its port 29500 is free; everything binds its loopback)."""
    cmd = ["unshare", "-rn", sys.executable, "-c", _LOOPBACK_UP, "-m", "torch.distributed.run",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29500",
           "-m", "da3_plugins.cli", *TRAIN, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _single(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "da3_plugins.cli", *TRAIN, *args], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.double() for k, v in load_file(str(folder / "model.safetensors")).items()}


def _log(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_train_as_one_with_the_global_batch(tmp_path):
    if not _private_network():
        pytest.skip("needs a private network namespace (unshare -rn) for torchrun's store, which listens on "
                    "every interface")
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    _single("-o", str(one), "--steps", "3", "--batch-size", "4")
    res = _torchrun("-o", str(two), "--steps", "3", "--batch-size", "2")
    lines = res.stdout.splitlines()
    assert lines.count("DDP: 2 processes (gloo), global batch 4") == 1, res.stdout
    assert sum(line.startswith("Done: 3 steps") for line in lines) == 1, res.stdout  # process 0 alone talks

    # the same weights within float rounding (weights up to ~1 in size): measured 3.4e-6, as
    # between 1 and 2 threads in one process; the 3 steps moved them by up to 7.9e-4
    from da3_plugins.core.model import random_model

    start = {k: v.double() for k, v in random_model("da3-tiny", seed=1, device="cpu").net.state_dict().items()}
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - start[k.removeprefix("model.")]).abs().max().item() for k in a)
    scale = max(v.abs().max().item() for v in a.values())
    assert diff < 1e-5 * scale and diff < 2e-2 * moved, (diff, moved, scale)

    # one log, written by process 0: a line per step with the global batch's losses
    assert sorted(p.name for p in two.iterdir()) == ["config.json", "model.safetensors", "train_log.jsonl",
                                                      "train_state.json", "train_state.safetensors"]
    log_one, log_two = _log(one), _log(two)
    assert [e["step"] for e in log_two] == [1, 2, 3]
    assert log_one[0].keys() == log_two[0].keys() and "correspondence" in log_two[0]
    for x, y in zip(log_one, log_two):
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)
    state = json.loads((two / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["config"]["batch_size"] == 2 and state["step"] == 3

    # stopped after 2 steps and resumed under torchrun: as the uninterrupted run
    _torchrun("-o", str(resumed), "--steps", "2", "--batch-size", "2")
    _torchrun("-o", str(resumed), "--steps", "3", "--batch-size", "2", "--resume")
    c = _weights(resumed)
    assert max((b[k] - c[k]).abs().max().item() for k in b) <= 1e-6
    assert [e["step"] for e in _log(resumed)] == [1, 2, 3]
    for x, y in zip(log_two, _log(resumed)):
        assert y == pytest.approx(x, rel=1e-6)
    # resuming needs the same global batch (processes x batch size)
    from da3_plugins.cli import build_parser
    from da3_plugins.core.training import train
    from da3_plugins.train_commands import train_config_from_args

    cfg = train_config_from_args(build_parser().parse_args([*TRAIN, "-o", str(resumed), "--steps", "4",
                                                            "--batch-size", "2"]))
    with pytest.raises(ValueError, match=r"global batch of 4 = 2 x 2, now 1 x 2"):
        train(cfg, resumed, resume=True, progress=False)


# ----------------------------------------------------------------------------- in one process


def _scene_folders(root: Path) -> Path:
    from da3_plugins.core.datasets import TrainingSample, write_scene_folder
    from da3_plugins.core.synthetic import make_scene

    for i, (kind, n) in enumerate([("room", 3), ("inside", 4), ("objects", 5)]):
        s = make_scene(kind, num_views=n, height=42, width=56, seed=i)
        write_scene_folder(root / f"s{i}", TrainingSample(s.images, s.depth, s.extrinsics[:, :3], s.intrinsics))
    return root


@pytest.mark.parametrize("source", ["synthetic", "folder"])
def test_processes_load_their_slices_of_one_global_batch_plan(source, tmp_path):
    cfg = SyntheticDataConfig(height=42, width=56, scenes=4, views_per_scene=4, min_views=2, max_views=4)
    if source == "folder":
        root = _scene_folders(tmp_path)  # scenes of 3, 4 and 5 views
        make = lambda: FolderData(root, cfg)  # noqa: E731
    else:
        make = lambda: SyntheticData(cfg)  # noqa: E731
    for step in range(3):
        rng = np.random.default_rng([7, step])
        whole = make().batch(rng, 4)
        after = rng.random()
        for world in (2, 4):
            parts = []
            for rank in range(world):
                r = np.random.default_rng([7, step])
                parts.append(make().batch(r, 4 // world, rank=rank, world_size=world))
                assert r.random() == after  # every process consumed the generator alike
            for name in ("images", "depth", "extrinsics", "intrinsics"):
                assert np.array_equal(getattr(whole, name), np.concatenate([getattr(p, name) for p in parts])), name
    with pytest.raises(ValueError, match="rank"):
        make().batch(np.random.default_rng(0), 2, rank=2, world_size=2)


def test_shards_with_the_whole_batch_divisor_average_to_the_whole_batch_loss_and_gradient(tiny_model):
    """What DDP computes: each process's loss with the masked means divided by the whole
    batch's count over the processes; the mean of the losses and of their gradients is the
    whole batch's."""
    data = SyntheticData(SyntheticDataConfig(height=42, width=56, scenes=3, views_per_scene=2, min_views=2,
                                             max_views=2))
    batch = data.batch(np.random.default_rng(0), 4)
    batch.depth[1, :, :10] = 0  # unknown depth: the shards' counts of valid pixels differ
    batch.depth[3, 0] = 0
    net = tiny_model.net
    params = [p for p in net.parameters()]
    weights = LossWeights(correspondence=1.0)

    def losses(tgt, divisor=None, grad=True):
        net.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad):
            terms = compute_losses(forward_for_training(net, tgt.images, match_heads=True), tgt, weights, divisor)
            if grad:
                sum(getattr(weights, k) * v for k, v in terms.items()).backward()
        return {k: v.item() for k, v in terms.items()}, [None if p.grad is None else p.grad.clone() for p in params]

    whole, grad = losses(prepare_targets(batch))
    shards = [prepare_targets(type(batch)(*(x[i:i + 2] for x in (batch.images, batch.depth, batch.extrinsics,
                                                                   batch.intrinsics)))) for i in (0, 2)]
    counts = [[], []]  # every shard's count of each masked mean, in call order
    plain = [losses(tgt, lambda c, seen=seen: seen.append(c) or c.clamp(min=1.0), grad=False)[0]
             for tgt, seen in zip(shards, counts)]
    assert len(counts[0]) == len(counts[1]) and any(a != b for a, b in zip(*counts))
    # without a shared divisor the shards' mean is not the whole batch's loss
    assert abs((plain[0]["depth"] + plain[1]["depth"]) / 2 - whole["depth"]) > 1e-4
    summed = [a + b for a, b in zip(*counts)]  # what the all-reduce gives every process

    def whole_batch_divisor():
        calls = iter(summed)
        return lambda count: next(calls).clamp(min=1.0) / 2

    results = [losses(tgt, whole_batch_divisor()) for tgt in shards]
    for key, value in whole.items():
        assert (results[0][0][key] + results[1][0][key]) / 2 == pytest.approx(value, rel=1e-5), key
    for g, g0, g1 in zip(grad, results[0][1], results[1][1]):
        if g is None:
            assert g0 is None and g1 is None
        else:
            assert ((g0 + g1) / 2 - g).abs().max() <= 1e-5 * g.abs().max()  # float32 rounding: 4e-6 here


def test_torchrun_env(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert torchrun_env() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (1, 2, 1)
    monkeypatch.delenv("RANK")
    with pytest.raises(ValueError, match="RANK"):
        torchrun_env()
