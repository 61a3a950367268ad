"""Parity with the official depth-anything-3 0.1.1 network (the oracle), in float32.

For each preset, the official network is built through its own config mechanism with
random weights (large, giant, metric/mono and nested with fewer transformer blocks, all
widths unchanged), written as a hub-style folder, and loaded with ``load_model``.  Both
then see the same input and are compared within 1e-4 of the output scale.
"""

from __future__ import annotations

import pytest
import torch

from da3_plugins.core import get_preset, load_model
from da3_plugins.core.model.backbone import select_reference_view
from da3_plugins.core.model.config import shrink_backbone
from helpers import assert_close, random_cameras, random_images
from oracle import official_network, run_official, save_hub_folder

pytestmark = pytest.mark.oracle

# Reduced depths (same widths) for the large presets, chosen to keep the official
# structure: an output layer before alt_start, a local one and cross-view ones.
SHRINK = {
    "da3-large": dict(depth=8, out_layers=[3, 5, 6, 7], alt_start=4),
    # alt_start odd, as in the giant preset: the first camera-token block is cross-view
    "da3-giant": dict(depth=6, out_layers=[2, 3, 4, 5], alt_start=3),
    "da3metric-large": dict(depth=4, out_layers=[0, 1, 2, 3]),
    "da3mono-large": dict(depth=4, out_layers=[0, 1, 2, 3]),
}


def _our_config(preset: str):
    cfg = get_preset(preset)
    if preset == "da3nested-giant-large":
        import dataclasses

        g, m = SHRINK["da3-giant"], SHRINK["da3metric-large"]
        return dataclasses.replace(
            cfg,
            anyview=shrink_backbone(cfg.anyview, g["depth"], g["out_layers"], g["alt_start"]),
            metric=shrink_backbone(cfg.metric, m["depth"], m["out_layers"]),
        )
    if preset in SHRINK:
        s = SHRINK[preset]
        return shrink_backbone(cfg, s["depth"], s["out_layers"], s.get("alt_start"))
    return cfg


_CACHE: dict = {}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """pair(preset) -> (official network, our DA3Model) with identical random weights."""

    def get(preset: str):
        if preset not in _CACHE:
            _CACHE.clear()  # one pair in memory at a time
            if preset == "da3nested-giant-large":
                off = official_network(preset, SHRINK["da3-giant"], SHRINK["da3metric-large"])
            else:
                off = official_network(preset, SHRINK.get(preset))
            folder = save_hub_folder(off, tmp_path_factory.mktemp(preset), preset, dedupe_shared=True)
            _CACHE[preset] = (off, load_model(folder, preset=_our_config(preset), device="cpu", dtype="fp32"))
        return _CACHE[preset]

    yield get
    _CACHE.clear()


def compare(ours, ref, keys=("depth", "depth_conf", "extrinsics", "intrinsics"), rel=1e-4):
    diffs = {}
    for k in keys:
        diffs[k] = assert_close(getattr(ours, k), ref[k], k, rel)
    return diffs


# ----------------------------------------------------------------------------- any-view


@pytest.mark.parametrize(
    "views,h,w",
    [(1, 56, 84), (2, 70, 42), (1, 518, 518), (2, 28, 126), (3, 98, 70)],
)
def test_small_views_and_sizes(pair, views, h, w):
    off, model = pair("da3-small")
    x = random_images(1, views, h, w, seed=views * 1000 + h + w)
    compare(model.net(x, ref_view_strategy="first"), run_official(off, x, ref_view_strategy="first"))


@pytest.mark.parametrize("strategy", ["first", "middle", "saddle_balanced", "saddle_sim_range"])
def test_small_reference_view_strategies_5_views(pair, strategy):
    off, model = pair("da3-small")
    x = random_images(1, 5, 42, 56, seed=7)
    compare(model.net(x, ref_view_strategy=strategy), run_official(off, x, ref_view_strategy=strategy))


def test_reference_view_selection_reorders(pair):
    """The strategies are not all 'view 0' on this input, so the reordering is exercised."""
    _, model = pair("da3-small")
    picks = set()
    for seed in range(6):
        x = random_images(1, 5, 42, 56, seed=seed)
        feats = model.net.backbone.pretrained.patch_embed(x.flatten(0, 1)).mean(1).reshape(1, 5, -1)
        for strategy in ("middle", "saddle_balanced", "saddle_sim_range"):
            picks.add(int(select_reference_view(feats, strategy)[0]))
    assert picks - {0}, "every strategy picked view 0: the reorder path was never taken"


def test_small_batch_of_two(pair):
    off, model = pair("da3-small")
    x = random_images(2, 3, 42, 70, seed=3)
    compare(model.net(x), run_official(off, x))


def test_small_pose_conditioned(pair):
    off, model = pair("da3-small")
    x = random_images(1, 4, 42, 56, seed=11)
    ext, k = random_cameras(1, 4, 42, 56, seed=11)
    ours = model.net(x, ext, k)
    ref = run_official(off, x, extrinsics=ext, intrinsics=k)
    compare(ours, ref)
    # conditioning changes the result (the camera tokens are really used)
    assert (ours.depth - model.net(x).depth).abs().max() > 1e-4


def test_small_feature_export(pair):
    off, model = pair("da3-small")
    x = random_images(1, 3, 42, 56, seed=5)
    ours = model.net(x, export_feat_layers=[2, 7])
    ref = run_official(off, x, export_feat_layers=[2, 7])
    for key in ("feat_layer_2", "feat_layer_7"):
        assert_close(ours.aux[key], ref["aux"][key], key)


def test_small_ray_pose(pair):
    off, model = pair("da3-small")
    x = random_images(1, 3, 42, 56, seed=9)
    torch.manual_seed(123)
    ours = model.net(x, use_ray_pose=True, ref_view_strategy="first")
    torch.manual_seed(123)
    ref = run_official(off, x, use_ray_pose=True, ref_view_strategy="first")
    compare(ours, ref, rel=1e-3)


def test_ray_branch_matches_when_kept(pair):
    """The DualDPT ray outputs themselves, compared head to head (the official head always
    computes them; ours only on request)."""
    off, model = pair("da3-small")
    x = random_images(1, 2, 42, 56, seed=13)
    feats, _ = model.net.backbone(x)
    patch = [f for f, _ in feats]
    ours = model.net.head(patch, x, with_ray=True)
    ref = off.head(feats, 42, 56, patch_start_idx=0)
    assert_close(ours["ray"], ref["ray"], "ray")
    assert_close(ours["ray_conf"], ref["ray_conf"], "ray_conf")
    assert_close(ours["depth"], ref["depth"], "depth")


def test_base(pair):
    off, model = pair("da3-base")
    x = random_images(1, 3, 42, 70, seed=21)
    compare(model.net(x), run_official(off, x))
    ext, k = random_cameras(1, 2, 42, 70, seed=21)
    compare(model.net(x[:, :2], ext, k), run_official(off, x[:, :2], extrinsics=ext, intrinsics=k))


@pytest.mark.slow
def test_large_reduced(pair):
    off, model = pair("da3-large")
    x = random_images(1, 4, 42, 56, seed=31)
    compare(model.net(x), run_official(off, x))


# ----------------------------------------------------------------------------- giant + Gaussians


def _compare_gaussians(ours, ref, rel=1e-4):
    for key in ("means", "scales", "rotations", "harmonics", "opacities"):
        assert_close(getattr(ours, key), getattr(ref, key), f"gaussians.{key}", rel)


@pytest.mark.slow
def test_giant_reduced_gaussians(pair):
    off, model = pair("da3-giant")
    x = random_images(1, 3, 42, 56, seed=41)
    ours = model.net(x, infer_gs=True)
    ref = run_official(off, x, infer_gs=True)
    compare(ours, ref)
    _compare_gaussians(ours.gaussians, ref["gaussians"])


@pytest.mark.slow
def test_giant_reduced_gaussians_pose_conditioned(pair):
    off, model = pair("da3-giant")
    x = random_images(1, 2, 42, 56, seed=43)
    ext, k = random_cameras(1, 2, 42, 56, seed=43)
    ours = model.net(x, ext, k, infer_gs=True)
    ref = run_official(off, x, extrinsics=ext, intrinsics=k, infer_gs=True)
    compare(ours, ref)
    _compare_gaussians(ours.gaussians, ref["gaussians"])


@pytest.mark.slow
def test_giant_reduced_ray_pose_with_gaussians(pair):
    """Gaussians placed with the cameras of the ray-map solver (seeded RNG on both sides)."""
    off, model = pair("da3-giant")
    x = random_images(1, 2, 42, 56, seed=47)
    torch.manual_seed(5)
    ours = model.net(x, use_ray_pose=True, infer_gs=True)
    torch.manual_seed(5)
    ref = run_official(off, x, use_ray_pose=True, infer_gs=True)
    compare(ours, ref, rel=1e-3)
    _compare_gaussians(ours.gaussians, ref["gaussians"], rel=1e-3)


# ----------------------------------------------------------------------------- mono / metric / nested


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["da3mono-large", "da3metric-large"])
def test_monocular_reduced_with_sky(pair, preset):
    off, model = pair(preset)
    x = random_images(1, 2, 56, 84, seed=51)
    ours = model.net(x)
    ref = run_official(off, x)
    sky = ref["sky"] >= 0.3
    assert 10 < int(sky.sum()) < sky.numel() - 10, "random weights gave no mixed sky: the sky fill is not exercised"
    compare(ours, ref, keys=("depth", "sky"))
    assert ours.depth_conf is None and ours.extrinsics is None
    # sky pixels were filled with one far value (the 99th percentile of the rest)
    filled = ours.depth[ours.sky >= 0.3]
    assert torch.all(filled == filled[0]) and filled[0] >= ours.depth[ours.sky < 0.3].median()


@pytest.mark.slow
def test_nested_reduced_metric_scaling(pair):
    off, model = pair("da3nested-giant-large")
    x = random_images(1, 3, 42, 56, seed=61)
    ours = model.net(x, infer_gs=True)
    ref = run_official(off, x, infer_gs=True)
    compare(ours, ref)
    # the Gaussians come from the any-view branch before metric scaling (as upstream)
    _compare_gaussians(ours.gaussians, ref["gaussians"])
    assert ours.is_metric and ref["is_metric"] == 1
    assert ours.scale_factor == pytest.approx(ref["scale_factor"], rel=1e-4)
    assert ours.sky is None


def test_small_bf16_backbone_follows_official_autocast_policy(pair):
    """Our bf16 backbone vs the official network under bf16 autocast (its heads opt out)."""
    off, model = pair("da3-small")
    x = random_images(1, 3, 42, 56, seed=71)
    model.net.backbone_dtype = torch.bfloat16
    try:
        ours = model.net(x)
    finally:
        model.net.backbone_dtype = torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = off(x)
    compare(ours, ref, keys=("depth", "depth_conf"), rel=1e-5)
    assert ours.depth.dtype == torch.float32
