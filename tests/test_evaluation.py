"""Evaluation: the scores of exact and trivial predictions, the embedded model against the
baselines, and `da3p eval`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from da3_plugins.cli import main
from da3_plugins.core import load_model
from da3_plugins.core.evaluation import METRICS, evaluate, heldout_scenes, score_scene
from da3_plugins.core.geometry import apply_sim3_to_poses


def _rot(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_exact_prediction_in_another_frame_and_scale_scores_perfectly(small_room_scene):
    s = small_room_scene
    gt = (s.depth.astype(np.float64), s.extrinsics, s.intrinsics)
    scale = 0.37
    ext = apply_sim3_to_poses(s.extrinsics, _rot(30), np.array([1.0, -2.0, 0.5]), scale)
    sc = score_scene(s.depth * scale, ext, s.intrinsics, *gt)
    assert sc.auc03 == pytest.approx(1.0) and sc.auc30 == pytest.approx(1.0)
    assert sc.abs_rel == pytest.approx(0.0, abs=1e-6) and sc.delta1 == 1.0
    assert sc.chamfer < 1e-6 and sc.fscore == 1.0


def test_identity_baseline_and_a_perturbed_prediction_score_in_order(small_room_scene):
    s = small_room_scene
    gt = (s.depth.astype(np.float64), s.extrinsics, s.intrinsics)
    ident = score_scene(np.ones_like(gt[0]), np.tile(np.eye(4)[:3], (4, 1, 1)), s.intrinsics, *gt)
    assert ident.auc03 == 0.0 and ident.auc30 == 0.0  # no translation direction at all
    assert ident.abs_rel > 0.1 and ident.fscore < 0.5
    # cameras rotated by 1 degree each and depth with 5% noise: between the two
    rng = np.random.default_rng(0)
    ext = np.stack([np.concatenate([_rot(1.0 * i) @ e[:, :3], e[:, 3:]], 1) for i, e in enumerate(s.extrinsics)])
    noisy = score_scene(gt[0] * (1 + 0.05 * rng.normal(size=gt[0].shape)), ext, s.intrinsics, *gt)
    assert 0.0 < noisy.auc03 < 1.0 and noisy.auc30 > 0.9
    assert 0.0 < noisy.abs_rel < ident.abs_rel and noisy.fscore > ident.fscore
    with pytest.raises(ValueError, match="shape"):
        score_scene(gt[0][:, :10], s.extrinsics, s.intrinsics, *gt)


BASELINES = ("identity poses + constant depth", "da3-tiny, untrained (random weights)")


@pytest.fixture(scope="module")
def embedded_table():
    model = load_model("embedded", device="cpu")
    table = evaluate(model, heldout_scenes(8, views=4, seed=2000), name="embedded")
    print("\n" + table.format())
    return table


@pytest.mark.slow
def test_embedded_model_beats_the_trivial_baselines_on_another_pool(embedded_table):
    """8 scenes of a pool neither training (seed 0) nor the packed table (seed 1000) used: depth,
    points and pose AUC@30 beat both baselines.  AUC@3 is not asserted here: on these 48 view
    pairs no method has a pair under 3 degrees (all tie at 0); the packed 24-scene table has
    one (see test_readme_shows_the_packed_models_evaluation and the README)."""
    for baseline in BASELINES:
        beats = embedded_table.beats("embedded", baseline)
        assert all(beats[m] for m in ("auc30", "abs_rel", "delta1", "chamfer", "fscore")), (baseline, beats)
    assert embedded_table.rows["embedded"].auc30 > 0.15
    assert set(embedded_table.rows["embedded"].as_dict()) >= set(METRICS)


@pytest.mark.slow
def test_cli_eval(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "embedded", "--scenes", "2", "--views", "3", "--json", str(out),
                 "--progress", "none"]) == 0
    text = capsys.readouterr().out
    assert "| identity poses + constant depth |" in text and "AUC@3" in text
    data = json.loads(out.read_text())
    assert data["views"] == 3 and set(data["rows"]) == {"da3-tiny (embedded)", "da3-tiny, untrained (random weights)",
                                                          "identity poses + constant depth"}
    assert main(["eval", "--model", str(tmp_path / "none"), "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none" in err[0]
    assert main(["eval", "--model", "embedded", "--data", str(tmp_path / "missing"), "--progress", "none"]) == 2


def test_readme_shows_the_packed_models_evaluation():
    """The README's table is the one pack_embedded_model.py measured (eval.json), row for row."""
    from importlib.resources import files
    from pathlib import Path

    from da3_plugins.core.evaluation import EvalScores, EvalTable

    data = json.loads((files("da3_plugins") / "data" / "da3-tiny" / "eval.json").read_text())
    table = EvalTable(rows={k: EvalScores(**v) for k, v in data["rows"].items()}, views=data["views"])
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table.format() in readme
    beats = [table.beats("da3-tiny (embedded)", b) for b in data["rows"] if b != "da3-tiny (embedded)"]
    # every metric beats every baseline on the 24 scenes (AUC@3 only just: README, The embedded model)
    assert beats and all(b[m] for b in beats for m in METRICS), beats
