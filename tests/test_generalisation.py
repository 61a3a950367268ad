"""Issue 19: domain-randomised training scenes, multi-resolution batches, evaluation-only scene
families and the demo's surface error.

* every generator's depth is exact: world points from one view's depth, projected into
  another view and cast again with the generator's own ray caster through exactly those
  continuous pixel coordinates, are hit at exactly their projected depth (or behind a nearer
  surface, never beyond it);
* the evaluation families are not the training generators' output: their depth maps are
  far less planar than any training scene's (and their primitives are other ones);
* training batches come at several sizes under a token budget, deterministically, and a
  short run trains on them; ``da3p eval --family`` reports per family;
* ``fused_surface_error`` is 0 for the truth and grows when a view is displaced.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core.synthetic.heldout import make_heldout_scene
from da3_plugins.core.synthetic.randomized import (LAYOUTS, make_randomized_scene, random_scene_spec,
                                                   render_spec_views)


def _reprojection(points: np.ndarray, w2c: np.ndarray, k: np.ndarray, height: int, width: int, cast):
    """(projected depth z, the caster's depth t) of the world points inside view (w2c, k)."""
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = (cam @ k.T)[:, :2] / z[:, None]
    inside = (z > 0) & (uv[:, 0] > 0) & (uv[:, 0] < width) & (uv[:, 1] > 0) & (uv[:, 1] < height)
    pix = np.concatenate([uv[inside], np.ones((inside.sum(), 1))], 1)
    d = (pix @ np.linalg.inv(k).T) @ w2c[:3, :3]  # camera z = 1 through those exact coordinates
    t = cast(conv.w2c_to_c2w(w2c)[:3, 3], d)
    return z[inside], t


def _world_points(depth: np.ndarray, k: np.ndarray, w2c: np.ndarray) -> np.ndarray:
    from da3_plugins.core.geometry import depth_to_world_points

    return depth_to_world_points(depth.astype(np.float64), k, w2c[:3])[depth > 0]


def _check_exact(z: np.ndarray, t: np.ndarray, tol: float) -> None:
    """Each point is hit at its depth (within ``tol``) or hidden by a clearly nearer surface;
    none is hit beyond it (seen through), and almost none is in between (inexact depth)."""
    rel = (t - z) / z
    assert len(z) > 200, "too few points land in the other view"
    assert np.all(rel < tol), f"a surface point is seen through: {rel.max():.2e}"
    same = np.abs(rel) < tol
    assert same.mean() > 0.4, f"only {same.mean():.2f} of the reprojected points are hit at their depth"
    grey = (np.abs(rel) >= tol) & (np.abs(rel) < 1e-3)
    assert grey.mean() < 0.02, f"{grey.mean():.3f} of the points are hit within 0.1% but not exactly"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_randomized_depth_reprojects_exactly(layout):
    from da3_plugins.core.synthetic.raycast import cast_rays

    spec = random_scene_spec(seed=11, num_views=6, layout=layout)
    h, w = 70, 98
    images, depth, ext, ks = render_spec_views(spec, [0, 1], h, w)
    assert images.shape == (2, h, w, 3) and depth.dtype == np.float32
    z, t = _reprojection(_world_points(depth[0], ks[0], ext[0]), ext[1], ks[1], h, w,
                         lambda o, d: cast_rays(spec.primitives, np.broadcast_to(o, d.shape), d)[0])
    _check_exact(z, t, 1e-5)


def test_randomized_sizes_keep_one_geometry():
    """One scene at two sizes: the same cameras, K scaled with the size (field of view of the
    longer side), and the same surface under the centre pixel."""
    spec = random_scene_spec(seed=4, num_views=3)
    _, d1, e1, k1 = render_spec_views(spec, [2], 42, 56)
    _, d2, e2, k2 = render_spec_views(spec, [2], 84, 112)
    assert np.array_equal(e1, e2)
    assert np.allclose(k2[0, :2], 2 * k1[0, :2])
    assert 40 <= spec.fov_deg <= 100
    # pixel centres (20.5, 27.5) at 42x56 and (41, 55) at 84x112 are the same ray
    ray = np.linalg.inv(k1[0]) @ [27.5, 20.5, 1.0]
    assert np.allclose(np.linalg.inv(k2[0]) @ [55.0, 41.0, 1.0], ray)


def test_randomized_scenes_vary_their_looks():
    specs = [random_scene_spec(seed=s) for s in range(40)]
    assert {s.layout for s in specs} == set(LAYOUTS)
    shadings = {m for s in specs for m in s.shading}
    assert shadings == {"flat", "shaded", "textured", "noisy"}
    fovs = [s.fov_deg for s in specs]
    assert min(fovs) < 55 and max(fovs) > 85
    assert any(not s.closed for s in specs) and any(s.lighting.point is not None for s in specs)
    means = [render_spec_views(s, [0], 28, 42)[0].reshape(-1, 3).mean(0) for s in specs[:8]]
    assert np.ptp(np.stack(means), 0).min() > 40  # colour statistics differ by scene
    a = make_randomized_scene(seed=3, num_views=2, height=28, width=42)
    b = make_randomized_scene(seed=3, num_views=2, height=28, width=42)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.depth, b.depth)


@pytest.mark.parametrize("family", ["terrain", "shapes"])
def test_heldout_family_depth_reprojects_exactly(family):
    h, w = 56, 84
    s = make_heldout_scene(family, seed=1, num_views=2, height=h, width=w)
    assert s.images.shape == (2, h, w, 3) and s.depth.shape == (2, h, w)
    assert (s.depth > 0).mean() > 0.5
    z, t = _reprojection(_world_points(s.depth[0], s.intrinsics[0], s.extrinsics[0]), s.extrinsics[1],
                         s.intrinsics[1], h, w, s.cast)
    _check_exact(z, t, 1e-5)


def _planar_fraction(depth: np.ndarray) -> float:
    """Fraction of pixels (with valid neighbours) where inverse depth is affine in the pixel
    coordinates: flat surfaces (walls, floors, boxes, panels)."""
    d = depth.astype(np.float64)
    inv = np.where(d > 0, 1 / np.maximum(d, 1e-9), 0)
    c = inv[:, 1:-1, 1:-1]
    ok = (d[:, 1:-1, 1:-1] > 0) & (d[:, 2:, 1:-1] > 0) & (d[:, :-2, 1:-1] > 0) & (d[:, 1:-1, 2:] > 0) & (d[:, 1:-1, :-2] > 0)
    dxx = np.abs(inv[:, 1:-1, 2:] - 2 * c + inv[:, 1:-1, :-2])
    dyy = np.abs(inv[:, 2:, 1:-1] - 2 * c + inv[:, :-2, 1:-1])
    return float(((dxx < 1e-4 * c) & (dyy < 1e-4 * c) & ok).sum() / max(ok.sum(), 1))


def test_heldout_families_differ_from_the_training_generators():
    from da3_plugins.core.synthetic import make_scene
    from da3_plugins.core.synthetic.heldout_shapes import _Hall
    from da3_plugins.core.synthetic.raycast import Box, Quad, Sphere

    h, w = 56, 84
    training = [_planar_fraction(make_randomized_scene(50 + i, 2, h, w).depth) for i in range(6)]
    training += [_planar_fraction(make_scene(("room", "inside", "objects")[i % 3], 2, h, w, seed=i).depth)
                 for i in range(3)]
    terrain = [_planar_fraction(make_heldout_scene("terrain", i, 2, h, w).depth) for i in range(3)]
    shapes = [_planar_fraction(make_heldout_scene("shapes", i, 2, h, w).depth) for i in range(3)]
    assert max(terrain) < 0.3 and max(shapes) < 0.6 < min(training)
    # the training generators' primitives are quads, boxes and spheres; the families use none of them
    assert {type(p) for i in range(10) for p in random_scene_spec(i).primitives} <= {Quad, Box, Sphere}
    hall = _Hall(np.random.default_rng([0, 777]))
    assert not any(isinstance(q, (Quad, Box, Sphere)) for q in hall.pieces)


def test_randomized_batches_at_several_sizes_within_the_token_budget():
    from da3_plugins.core.training import RandomizedData, SyntheticDataConfig

    cfg = SyntheticDataConfig(generator="randomized", sizes=((42, 56), (84, 112)), max_tokens=60, scenes=4,
                              views_per_scene=4, min_views=2, max_views=4)
    data = RandomizedData(cfg)
    seen = set()
    for step in range(6):
        b = data.batch(np.random.default_rng([0, step]), 4)
        n, v, h, w = b.depth.shape
        seen.add((h, w))
        assert b.images.shape == (n, v, h, w, 3) and b.extrinsics.shape == (n, v, 3, 4)
        tokens = n * v * (h // 14) * (w // 14)
        assert tokens <= 60 or (n == 1 and v == 2), (n, v, h, w)
    assert seen == {(42, 56), (84, 112)}
    again = RandomizedData(cfg).batch(np.random.default_rng([0, 3]), 4)
    assert np.array_equal(again.images, data.batch(np.random.default_rng([0, 3]), 4).images)
    # two processes take disjoint halves of one plan at one size
    r0 = data.batch(np.random.default_rng(7), 1, rank=0, world_size=2)
    r1 = data.batch(np.random.default_rng(7), 1, rank=1, world_size=2)
    assert r0.images.shape[2:] == r1.images.shape[2:]


def test_config_options_validate_and_round_trip():
    from da3_plugins.core.errors import OptionError
    from da3_plugins.core.training import SyntheticDataConfig, TrainConfig

    with pytest.raises(OptionError, match="generator"):
        SyntheticDataConfig(generator="photos")
    with pytest.raises(OptionError, match="only the randomized"):
        SyntheticDataConfig(sizes=((126, 168),))
    with pytest.raises(OptionError, match="multiples of 14"):
        SyntheticDataConfig(generator="randomized", sizes=((100, 168),))
    cfg = TrainConfig(synthetic=SyntheticDataConfig(generator="randomized", sizes=((126, 168), (378, 504)),
                                                    max_tokens=2000, fov_range=(40.0, 100.0)))
    assert TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


def test_short_randomized_run_trains(tmp_path):
    from da3_plugins.core.training import SyntheticDataConfig, TrainConfig, train

    syn = SyntheticDataConfig(generator="randomized", sizes=((28, 42), (42, 28)), max_tokens=24, height=28, width=42,
                              scenes=2, views_per_scene=3, min_views=2, max_views=3)
    res = train(TrainConfig(synthetic=syn, steps=2, batch_size=2, warmup=1), tmp_path / "run", progress=False)
    assert len(res.history) == 2 and all(np.isfinite(e["loss"]) for e in res.history)


def test_a_run_saved_before_the_new_options_resumes(tmp_path):
    """Its saved config lacks generator, sizes and max_tokens: today's defaults fill them."""
    import dataclasses

    from da3_plugins.core.training import SyntheticDataConfig, TrainConfig, train

    rooms = TrainConfig(synthetic=SyntheticDataConfig(height=28, width=42, scenes=1, views_per_scene=2, max_views=2),
                        steps=1, batch_size=1, warmup=1)
    train(rooms, tmp_path / "old", progress=False)
    state = json.loads((tmp_path / "old" / "train_state.json").read_text())
    for key in ("generator", "sizes", "max_tokens"):
        del state["config"]["synthetic"][key]
    (tmp_path / "old" / "train_state.json").write_text(json.dumps(state))
    again = train(dataclasses.replace(rooms, steps=2), tmp_path / "old", resume=True, progress=False)
    assert again.steps == 2


def test_fused_surface_error_is_zero_for_the_truth_and_grows_with_misalignment():
    from da3_plugins.core.evaluation import fused_surface_error
    from da3_plugins.core.synthetic import make_scene

    s = make_scene("room", num_views=4, height=42, width=56, seed=2)
    valid = s.depth > 0
    exact = fused_surface_error(s.depth, s.intrinsics, s.extrinsics, valid, s)
    assert exact.fraction < 1e-6 and exact.points == valid.sum()
    # the same prediction in another frame and scale (DA3's: view 0's camera, any scale)
    rel = conv.as_4x4(s.extrinsics) @ conv.invert_rigid(conv.as_4x4(s.extrinsics[:1]))
    rel[:, :3, 3] *= 2.5
    moved = fused_surface_error(2.5 * s.depth, s.intrinsics, rel, valid, s)
    assert moved.fraction < 1e-6 and abs(moved.scale - 0.4) < 1e-9
    # one view's depth pushed 10% out: its points leave the surface
    bad = s.depth.copy()
    bad[1:] *= 1.1
    off = fused_surface_error(bad, s.intrinsics, s.extrinsics, valid, s)
    assert off.fraction > 0.005


def test_demo_surface_error_regenerates_the_true_scene(tmp_path):
    from importlib.resources import files

    from da3_plugins.commands import demo_surface_error
    from da3_plugins.core.synthetic import make_scene

    demo = files("da3_plugins") / "data" / "demo"
    truth = json.loads((demo / "cameras.json").read_text())
    photos = sorted(str(p) for p in demo.iterdir() if p.name.startswith("view_"))
    scene = make_scene(**truth["synthetic"])
    rec = scene.to_reconstruction()
    err = demo_surface_error(rec, truth, photos)
    assert err is not None and err.fraction < 1e-6
    assert demo_surface_error(rec, {"frames": truth["frames"]}, photos) is None  # no recipe
    other = dict(truth, synthetic=dict(truth["synthetic"], seed=6))
    assert demo_surface_error(rec, other, photos) is None  # the recipe no longer makes these photos


def test_eval_cli_reports_per_family(tmp_path, capsys):
    from da3_plugins.cli import main

    out = tmp_path / "eval.json"
    code = main(["eval", "--model", "embedded", "--family", "terrain", "--scenes", "1", "--views", "2",
                 "--size", "42x56,56x42", "--json", str(out), "--progress", "none", "--threads", "2"])
    assert code == 0
    text = capsys.readouterr().out
    assert "held-out 'terrain' scenes" in text and "| terrain | 56x42 |" in text
    results = json.loads(out.read_text())["results"]
    assert [r["size"] for r in results] == ["42x56", "56x42"]
    assert set(results[0]["rows"]) == {"da3-tiny (embedded)", "da3-tiny, untrained (random weights)",
                                       "identity poses + constant depth"}


@pytest.mark.parametrize("argv, message", [
    (["train", "-o", "{tmp}/run", "--sizes", "126x168"], "only with --generator randomized"),
    (["eval", "--model", "embedded", "--family", "shapes", "--data", "{tmp}"], "exclude each other"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    from da3_plugins.cli import main

    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err


def test_readme_compares_the_randomised_run_with_its_record():
    """The README's 'What that run gave' table: the randomised numbers are the recorded run's
    (docs/training-runs), and the depth claims made about it hold there."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "docs" / "training-runs" / "2026-12-02-randomized-1500-2500.json").read_text())
    readme = (root / "README.md").read_text()
    rows = {(f["family"], f["size"]): f["rows"] for f in record["families"]}
    assert len(rows) == 8
    for (family, size), r in rows.items():
        s = r["da3-tiny (embedded)"]
        line = next(x for x in readme.splitlines() if x.startswith(f"| {family} | {size} | ") and "→" in x)
        cells = [c.strip().split(" → ")[1] for c in line.strip("|").split("|")[2:]]
        assert cells == [f"{s['abs_rel']:.3f}", f"{100 * s['auc30']:.1f}", f"{s['chamfer']:.3f}"], line
        for baseline in ("da3-tiny, untrained (random weights)", "identity poses + constant depth"):
            assert s["abs_rel"] < r[baseline]["abs_rel"] and s["delta1"] > r[baseline]["delta1"]
