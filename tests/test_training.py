"""Training: targets, a run that lowers the loss, determinism, resume, fine-tuning with a frozen
backbone, checkpoints the loader reads, teacher-student pseudo-labels, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from da3_plugins.cli import main
from da3_plugins.core import load_model
from da3_plugins.core.geometry import cameras_to_ray_map
from da3_plugins.core.synthetic import make_scene
from da3_plugins.core.training import (
    Batch,
    SyntheticData,
    SyntheticDataConfig,
    TrainConfig,
    compute_losses,
    forward_for_training,
    prepare_targets,
    pseudo_label_depth,
    train,
)

SMALL = SyntheticDataConfig(height=42, width=56, scenes=4, views_per_scene=3, min_views=2, max_views=3)


def _cfg(**kw) -> TrainConfig:
    base = dict(synthetic=SMALL, steps=4, batch_size=2, warmup=2, save_every=2)
    base.update(kw)
    return TrainConfig(**base)


class FixedData:
    """The same batch at every step."""

    def __init__(self, batch: Batch) -> None:
        self._batch = batch

    def batch(self, rng, batch_size):
        return self._batch


def _weights(folder):
    m = load_model(folder, device="cpu")
    return {k: v.clone() for k, v in m.net.state_dict().items()}


def test_targets_are_normalised_in_the_first_view_frame():
    s = make_scene("room", num_views=3, height=42, width=56, seed=3)
    batch = Batch(s.images[None], s.depth[None], s.extrinsics[None, :, :3], s.intrinsics[None])
    t = prepare_targets(batch)
    # mean distance of the points from the first camera is 1
    assert t.points.norm(dim=-1)[t.mask].mean().item() == pytest.approx(1.0, abs=1e-5)
    # view 0 is the identity: zero translation, quaternion (0, 0, 0, +-1)
    assert t.pose[0, 0, :3].abs().max().item() < 1e-6
    assert abs(abs(t.pose[0, 0, 6].item()) - 1) < 1e-6
    # points = depth * direction + origin with the exact rays of every pixel (scaled)
    w2c = t.w2c[0].double().numpy()
    rays = cameras_to_ray_map(w2c[:, :3], s.intrinsics, (42, 56))
    pts = t.depth[0].double().numpy()[..., None] * rays[..., :3] + rays[..., 3:]
    assert np.abs(pts - t.points[0].double().numpy()).max() < 1e-4
    # the ray targets are that map at the ray head's resolution (8 cells per patch)
    assert t.rays.shape == (1, 3, 24, 32, 6)
    small = cameras_to_ray_map(w2c[:, :3], s.intrinsics, (42, 56), (24, 32))
    assert np.abs(small - t.rays[0].double().numpy()).max() < 1e-5
    # the true depth is the scaled z-depth
    assert torch.allclose(t.depth[0] * t.scale[0], torch.from_numpy(s.depth), rtol=1e-5)


@pytest.mark.slow
def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    data = SyntheticData(SMALL)
    batch = data.batch(np.random.default_rng(0), 2)
    tgt = prepare_targets(batch)

    def loss_of(folder):
        m = load_model(folder, device="cpu")
        with torch.no_grad():
            terms = compute_losses(forward_for_training(m.net, tgt.images), tgt, TrainConfig().loss)
        return sum(terms.values()).item(), terms

    cfg = _cfg(steps=30, save_every=1, lr=5e-4, warmup=3, pose_condition_prob=0.0)
    with torch.enable_grad():
        # the weights after one update, to compare with the end of the run
        first = dataclasses.replace(cfg, steps=1)
        train(first, tmp_path / "start", progress=False, data=FixedData(batch))
        res = train(cfg, tmp_path / "a", progress=False, data=FixedData(batch))
    before, _ = loss_of(tmp_path / "start")
    after, terms = loss_of(tmp_path / "a")
    assert after < 0.6 * before, (before, after)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert all(np.isfinite(v.item()) for v in terms.values())


def test_same_seed_same_weights_and_resume_continues_exactly(tmp_path):
    with torch.enable_grad():
        train(_cfg(), tmp_path / "one", progress=False)
        train(_cfg(), tmp_path / "two", progress=False)
        half = _cfg(steps=2)
        train(half, tmp_path / "resumed", progress=False)
        res = train(_cfg(), tmp_path / "resumed", progress=False, resume=True)
    assert res.steps == 4
    a, b, c = _weights(tmp_path / "one"), _weights(tmp_path / "two"), _weights(tmp_path / "resumed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert torch.allclose(a[k], c[k], atol=1e-6), k
    state = json.loads((tmp_path / "resumed" / "train_state.json").read_text())
    assert state["step"] == 4 and len(state["history"]) == 4
    # a folder that holds a run is not overwritten by accident
    with pytest.raises(FileExistsError, match="resume"):
        train(_cfg(), tmp_path / "one", progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(_cfg(lr=1e-3), tmp_path / "one", progress=False, resume=True)


def test_fine_tuning_with_a_frozen_backbone(tmp_path):
    with torch.enable_grad():
        train(_cfg(steps=2), tmp_path / "base", progress=False)
        train(_cfg(init=str(tmp_path / "base"), freeze_backbone=True, steps=3, lr=1e-3), tmp_path / "ft", progress=False)
    a, b = _weights(tmp_path / "base"), _weights(tmp_path / "ft")
    bb = [k for k in a if k.startswith("backbone.")]
    heads = [k for k in a if k.startswith("head.")]
    assert bb and heads
    assert all(torch.equal(a[k], b[k]) for k in bb)
    assert any(not torch.equal(a[k], b[k]) for k in heads)
    # the checkpoint is in the hub layout: config.json names the preset
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["model_name"] == "da3-tiny"


def test_pseudo_labels_align_teacher_depth_to_sparse_noisy_measurements():
    s = make_scene("inside", num_views=2, height=42, width=56, seed=1)
    gt = s.depth.astype(np.float64)
    rng = np.random.default_rng(0)
    teacher = np.stack([(gt[i] - 0.3 * (i + 1)) / (1.5 + i) for i in range(2)])  # per-view affine of the truth
    sparse = np.where(rng.random(gt.shape) < 0.05, gt * (1 + 0.01 * rng.normal(size=gt.shape)), 0)
    outliers = (sparse > 0) & (rng.random(gt.shape) < 0.25)
    sparse[outliers] = rng.uniform(0.1, 20, int(outliers.sum()))
    label = pseudo_label_depth(teacher, sparse)
    rel = np.abs(label - gt) / gt
    assert np.median(rel) < 0.01 and rel.max() < 0.05
    # views without enough measurements keep only what was measured
    few = np.zeros_like(gt)
    few[0, 0, :3] = 2.0
    lab = pseudo_label_depth(teacher, few)
    assert lab[0, 0, :3].tolist() == [2.0, 2.0, 2.0] and lab[0].sum() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="teacher_depth"):
        pseudo_label_depth(teacher[:1], sparse)


def test_cli_train_and_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    with torch.enable_grad():
        code = main(["train", "-o", str(out), "--steps", "2", "--batch-size", "1", "--size", "42x56", "--scenes", "2",
                     "--views", "2-2", "--progress", "none"])
    assert code == 0
    assert (out / "model.safetensors").is_file() and (out / "train_log.jsonl").is_file()
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    for argv, needle in [
        (["train", "-o", str(tmp_path / "x"), "--data", str(tmp_path / "missing")], "--data"),
        (["train", "-o", str(tmp_path / "x"), "--init", str(tmp_path / "nothing")], "--init"),
        (["train", "-o", str(tmp_path / "x"), "--preset", "da3-huge"], "da3-huge"),
        (["train", "-o", str(out), "--steps", "2", "--size", "42x56"], "resume"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as exc:
        main(["train", "-o", str(tmp_path / "x"), "--size", "40x56"])
    assert exc.value.code == 2


def _make_variables() -> dict:
    """The Makefile's ``NAME := value`` lines, with $(OTHER) references expanded."""
    import re
    from pathlib import Path

    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    raw = dict(re.findall(r"^([A-Z0-9_]+) := (.*)$", make, re.M))

    def expand(text: str) -> str:
        return re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: expand(raw[m.group(1)]) if m.group(1) in raw else m.group(0),
                      text)

    return {"__text__": make, **{k: expand(v) for k, v in raw.items()}}


def _embedded_recipe():
    """(stage 1, stage 2) TrainConfigs of `make embedded-model` as da3p train parses them."""
    import shlex

    from da3_plugins.cli import build_parser
    from da3_plugins.train_commands import train_config_from_args

    v = _make_variables()
    make = v["__text__"]
    assert ("da3p train -o runs/da3-tiny-base --threads 2 $(EMBEDDED_STAGE1) $(call resume_if,runs/da3-tiny-base)"
            in make)
    assert ("da3p train -o runs/da3-tiny --init runs/da3-tiny-base --threads 2 $(EMBEDDED_STAGE2) "
            "$(call resume_if,runs/da3-tiny)" in make)
    parse = build_parser().parse_args
    base = train_config_from_args(parse(["train", "-o", "runs/da3-tiny-base", "--threads", "2",
                                         *shlex.split(v["EMBEDDED_STAGE1"])]))
    fine = train_config_from_args(parse(["train", "-o", "runs/da3-tiny", "--init", "runs/da3-tiny-base",
                                         "--threads", "2", *shlex.split(v["EMBEDDED_STAGE2"])]))
    return base, fine


def test_make_embedded_model_trains_on_randomized_scenes_at_several_sizes():
    """Issue 19's recipe: both stages on the domain-randomised generator, each step at one of
    several sizes from 112 to 504 px (168 and 504 among them) under a token budget; stage 2
    fine-tunes stage 1 on overlapping views with the correspondence aid; a rerun resumes."""
    base, fine = _embedded_recipe()
    for cfg in (base, fine):
        syn = cfg.synthetic
        assert syn.generator == "randomized" and syn.fov_range == (40.0, 100.0) and syn.max_tokens > 0
        assert (126, 168) in syn.sizes and max(max(s) for s in syn.sizes) == 504
        assert min(min(s) for s in syn.sizes) >= 112
        assert {h > w for h, w in syn.sizes} == {True, False}  # portrait and landscape
    assert base.init is None and fine.init == "runs/da3-tiny-base"
    assert fine.loss.correspondence == 1 and fine.synthetic.max_view_gap == 3
    assert "resume_if = $$(test -f $(1)/train_state.json && echo --resume)" in _make_variables()["__text__"]


@pytest.mark.xfail(strict=True, reason="issue 19: the shipped da3-tiny predates the randomized multi-size recipe, whose "
                   "model (run 2026-12-02) was not shipped: its cameras collapsed (README)")
def test_make_embedded_model_is_the_packed_models_recipe():
    """eval.json of the packed model records both stages of `make embedded-model`."""
    from importlib.resources import files
    from pathlib import Path

    base, fine = _embedded_recipe()
    packed = json.loads((files("da3_plugins") / "data" / "da3-tiny" / "eval.json").read_text())["training"]
    assert packed["base"]["steps"] == base.steps
    assert TrainConfig.from_json(packed["base"]["config"]) == base
    assert packed["steps"] == fine.steps
    assert not Path(packed["config"]["init"]).is_absolute()  # no machine path in the package
    # a stage 2 started from packed stage-1 weights in another folder: only init may differ
    assert dataclasses.replace(TrainConfig.from_json(packed["config"]), init=fine.init) == fine


def test_view_runs_keep_overlapping_views_together():
    from da3_plugins.core.training.data import _view_run

    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 5))
        v = _view_run(rng, 8, n, 3)
        assert len(v) == n and v.min() >= 0 and v.max() < 8
        assert np.all(np.diff(v) >= 1) and np.all(np.diff(v) <= 3)
    assert _view_run(rng, 4, 4, 3).tolist() == [0, 1, 2, 3]  # too long a path for any gap: consecutive
    data = SyntheticData(dataclasses.replace(SMALL, views_per_scene=3, max_view_gap=1, min_views=2, max_views=2))
    b = data.batch(np.random.default_rng(1), 3)
    assert b.images.shape[:2] == (3, 2)
    with pytest.raises(ValueError, match="max_view_gap"):
        SyntheticDataConfig(max_view_gap=-1)


def test_the_correspondence_aid_trains_the_matching_heads(tiny_model):
    """With a correspondence weight the loss has that term, and it reaches head 0's queries and
    keys of the cross-view blocks (the network itself is unchanged); without it there is no term."""
    s = make_scene("room", num_views=2, height=42, width=56, seed=4)
    batch = Batch(s.images[None], s.depth[None], s.extrinsics[None, :, :3], s.intrinsics[None])
    tgt = prepare_targets(batch)
    from da3_plugins.core.losses import LossWeights

    net = tiny_model.net
    with torch.enable_grad():
        out = forward_for_training(net, tgt.images, match_heads=True)
        assert len(out["match_q"]) == 2 and out["match_q"][0].shape == (1, 1, 12, 64)
        terms = compute_losses(out, tgt, LossWeights(correspondence=1.0))
        assert 0 < terms["correspondence"].item() < 10
        terms["correspondence"].backward()
    # in the last cross-view block only head 0's query and key rows get a gradient through it
    grad = net.backbone.pretrained.blocks[7].attn.qkv.weight.grad
    assert grad[:64].abs().sum() > 0 and grad[192:256].abs().sum() > 0
    assert grad[64:192].abs().sum() == 0 and grad[256:].abs().sum() == 0
    plain = compute_losses(forward_for_training(net, tgt.images), tgt, LossWeights())
    assert "correspondence" not in plain


def test_head_query_key_is_the_attentions_own_split(tiny_model):
    attn = tiny_model.net.backbone.pretrained.blocks[5].attn
    x = torch.randn(2, 10, 192)
    q, k, _ = attn.qkv(x).reshape(2, 10, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    for h in range(attn.num_heads):
        hq, hk = attn.head_query_key(x, h)
        assert torch.equal(hq, q[:, h]) and torch.equal(hk, k[:, h])
