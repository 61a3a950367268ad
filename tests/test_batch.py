"""``da3p batch`` without Ray (issue 16): every scene as ``da3p reconstruct`` writes it, bad
scenes reported and left out, exit codes, manifests, and a killed batch that resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from da3_plugins.batch import BatchSettings, SceneJob, exit_code, find_jobs, run_batch
from da3_plugins.cli import main
from da3_plugins.core.errors import UserInputError
from da3_plugins.runner import Progress

DEMO = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "demo"
COMMON = ["--model", "embedded", "--process-res", "168", "--progress", "none"]


def make_scenes(root: Path, bad: bool = True) -> Path:
    """Four small scenes from the demo photos (2-4 views each) and, with ``bad``, one whose only
    photo is not an image."""
    views = sorted(DEMO.glob("view_*.png"))
    picks = {"s1_kitchen": [0, 1, 2], "s2": [2, 3], "s3": [3, 4, 5, 0], "s4": [5, 1]}
    for name, idx in picks.items():
        (root / name).mkdir(parents=True)
        for i in idx:
            shutil.copy(views[i], root / name / views[i].name)
    if bad:
        (root / "s5_bad").mkdir()
        (root / "s5_bad" / "IMG_0001.png").write_bytes(b"not a png")
    (root / "notes.txt").write_text("not a scene")  # other files are ignored
    return root


def load_arrays(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_batch_equals_reconstruct_per_scene_and_reports_the_bad_one(tmp_path, capsys):
    root = make_scenes(tmp_path / "root")
    out = tmp_path / "out"
    code = main(["batch", str(root), "-o", str(out), *COMMON, "--export", "scene,ply,colmap"])
    table = capsys.readouterr().out
    assert code == 2  # some scene had bad input, nothing worse
    records = [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]
    by = {r["scene"]: r for r in records}
    assert set(by) == {"s1_kitchen", "s2", "s3", "s4", "s5_bad"}
    assert by["s5_bad"]["status"] == "failed" and by["s5_bad"]["code"] == 2
    assert "IMG_0001.png" in by["s5_bad"]["error"] and "\n" not in by["s5_bad"]["error"]
    assert not (out / "s5_bad").exists()
    assert sorted(p.name for p in out.iterdir()) == ["batch.jsonl", "s1_kitchen", "s2", "s3", "s4"]  # no leftovers
    assert "s5_bad" in table and "FAILED" not in table and "failed" in table
    for name, n in (("s1_kitchen", 3), ("s2", 2), ("s3", 4), ("s4", 2)):
        assert by[name]["status"] == "ok" and by[name]["views"] == n and by[name]["code"] == 0
        single = tmp_path / f"single_{name}"
        assert main(["reconstruct", str(root / name), "-o", str(single), *COMMON, "--export", "scene,ply,colmap"]) == 0
        assert sorted(p.relative_to(single).as_posix() for p in single.rglob("*")) == \
            sorted(p.relative_to(out / name).as_posix() for p in (out / name).rglob("*"))
        a, b = load_arrays(out / name / "scene.npz"), load_arrays(single / "scene.npz")
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
        assert (out / name / "points.ply").read_bytes() == (single / "points.ply").read_bytes()


def test_manifest_lines_and_json_lines(tmp_path, capsys):
    root = make_scenes(tmp_path / "root", bad=False)
    video_free = root / "s2"
    k = np.array([[300.0, 0, 168], [0, 300.0, 126], [0, 0, 1]])
    np.save(tmp_path / "k.npy", k)
    w2c = np.tile(np.eye(4), (2, 1, 1))
    w2c[1, 0, 3] = -0.3
    np.save(tmp_path / "w2c.npy", w2c)
    manifest = tmp_path / "scenes.txt"
    manifest.write_text("\n".join([
        "# one path per line, or JSON lines",
        "root/s1_kitchen",
        json.dumps({"path": "root/s2", "name": "posed", "poses": "w2c.npy", "intrinsics": "k.npy",
                    "options": {"align_to_input_ext_scale": True}}),
        "",
        json.dumps({"inputs": [str(root / "s3" / "view_03.png"), str(root / "s3" / "view_04.png")], "name": "two",
                    "options": {"process_res": 112}}),
    ]) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "-o", str(out), *COMMON, "--export", "scene"]) == 0
    recs = {json.loads(line)["scene"]: json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()}
    assert {r["status"] for r in recs.values()} == {"ok"} and set(recs) == {"s1_kitchen", "posed", "two"}
    from da3_plugins.core import Reconstruction

    posed = Reconstruction.load(out / "posed" / "scene.npz")
    np.testing.assert_allclose(posed.extrinsics, w2c[:, :3], atol=1e-6)  # the given cameras, their scale
    assert video_free.is_dir()
    two = Reconstruction.load(out / "two" / "scene.npz")
    assert max(two.width, two.height) == 112 and len(two) == 2

    bad = tmp_path / "bad.txt"
    bad.write_text('root/s1_kitchen\n{"path": "root/s2", "colour": 1}\n')
    capsys.readouterr()
    assert main(["batch", str(bad), "-o", str(tmp_path / "out2"), *COMMON]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("da3p: error:") and "bad.txt:2" in err and "'colour'" in err and "\n" not in err
    assert not (tmp_path / "out2").exists()  # nothing ran


def test_root_problems_are_one_line_errors(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), *COMMON]) == 2
    assert "missing: no such folder or manifest file" in capsys.readouterr().err
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(DEMO / "view_00.png", flat)
    assert main(["batch", str(flat), "-o", str(tmp_path / "o"), *COMMON]) == 2
    assert "da3p reconstruct" in capsys.readouterr().err  # photos directly in ROOT: says what to do
    with pytest.raises(UserInputError, match="two scenes are named 'a'"):
        m = tmp_path / "dup.txt"
        (tmp_path / "x" / "a").mkdir(parents=True)
        (tmp_path / "y" / "a").mkdir(parents=True)
        m.write_text("x/a\ny/a\n")
        find_jobs(str(m))
    assert main(["batch", str(flat), "-o", str(tmp_path / "o"), "--ray", "photos/"]) == 2
    assert "not a Ray address" in capsys.readouterr().err


class _Broken:
    """A model loader whose model fails for one scene: out of memory, or a bug."""

    def __init__(self, fail: str, error: BaseException) -> None:
        self.fail, self.error = fail, error

    def __call__(self, source, precision):
        from da3_plugins.runner import load_model_for

        model = load_model_for(source, device="cpu", precision=precision)
        fail, error = self.fail, self.error
        real = model.reconstruct

        def reconstruct(images, *args, **kwargs):
            names = [getattr(r, "source", "") for r in getattr(images, "refs", [])]
            if any(f"/{fail}/" in n for n in names):
                raise error
            return real(images, *args, **kwargs)

        model.reconstruct = reconstruct
        return model


@pytest.mark.parametrize("error, text", [(MemoryError(), "out of memory"), (RuntimeError("boom"), "RuntimeError: boom")])
def test_a_failing_scene_does_not_stop_the_others(tmp_path, error, text):
    root = make_scenes(tmp_path / "root", bad=False)
    settings = BatchSettings(output=str(tmp_path / "out"), model="embedded", exports=("scene",))
    from da3_plugins.core.options import ReconstructOptions

    settings = BatchSettings(output=settings.output, model="embedded", exports=("scene",),
                             options=ReconstructOptions(process_res=112))
    records = run_batch(find_jobs(str(root)), settings, Progress(), load_model=_Broken("s2", error))
    status = {r.scene: r for r in records}
    assert [r.scene for r in records] == ["s1_kitchen", "s2", "s3", "s4"]
    assert status["s2"].status == "failed" and text in status["s2"].error and status["s2"].code == 1
    assert all(status[s].status == "ok" for s in ("s1_kitchen", "s3", "s4"))
    assert exit_code(records) == 1
    assert not (tmp_path / "out" / "s2").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_killed_batch_leaves_no_partial_scene_and_resumes(tmp_path):
    root = tmp_path / "root"
    views = sorted(DEMO.glob("view_*.png"))
    for s in range(6):
        (root / f"scene{s}").mkdir(parents=True)
        for v in views:
            shutil.copy(v, root / f"scene{s}" / v.name)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "da3_plugins.cli", "batch", str(root), "-o", str(out), "--model", "embedded",
            "--process-res", "336", "--export", "scene,glb", "--progress", "none"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = out / "batch.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 1):
        time.sleep(0.02)
    time.sleep(0.3)  # into the next scene
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = [json.loads(line)["scene"] for line in log.read_text().splitlines()]
    assert 1 <= len(done) < 6, "the kill came too late to test anything"
    for s in range(6):
        folder = out / f"scene{s}"
        if folder.exists():  # complete or absent, nothing in between
            assert sorted(p.name for p in folder.iterdir()) == ["scene.glb", "scene.npz"]
    code = subprocess.run(args, capture_output=True, text=True)
    assert code.returncode == 0, code.stderr
    recs = {json.loads(line)["scene"]: json.loads(line) for line in log.read_text().splitlines()}
    assert len(recs) == 6
    for name in done:
        assert recs[name]["status"] == "skipped"
    assert sum(r["status"] == "ok" for r in recs.values()) == 6 - len(done)
    assert sorted(p.name for p in out.iterdir()) == ["batch.jsonl"] + [f"scene{s}" for s in range(6)]
    assert "6 scenes" in code.stdout and "skipped" in code.stdout


def test_teacher_pseudo_labels_at_dataset_scale(tmp_path):
    """Scene folders with sparse, noisy metric depth (2% of the pixels, true depth x 2.5) in the
    training-data format -> ``da3p batch --export depth``: the teacher's depth aligned to them, in
    the training-data format, on which ``da3p train --data OUT`` trains directly."""
    from da3_plugins.core.datasets import FolderDataset, TrainingSample, write_scene_folder
    from da3_plugins.core.synthetic import make_scene

    root = tmp_path / "scans"
    truth = {}
    rng = np.random.default_rng(0)
    for i in range(2):
        s = make_scene("room", num_views=4, height=126, width=168, seed=10 + i)
        metric = s.depth * 2.5
        sparse = np.where((rng.random(metric.shape) < 0.02) & (metric > 0),
                          metric * (1 + 0.01 * rng.standard_normal(metric.shape)), 0).astype(np.float32)
        w2c = s.extrinsics.copy()
        w2c[:, :3, 3] *= 2.5
        write_scene_folder(root / f"room{i}", TrainingSample(s.images, sparse, w2c, s.intrinsics))
        truth[f"room{i}"] = metric
    out = tmp_path / "labels"
    assert main(["batch", str(root), "-o", str(out), "--model", "embedded", "--process-res", "168",
                 "--export", "depth", "--progress", "none"]) == 0
    recs = [json.loads(line) for line in (out / "batch.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok", "ok"] and all("4/4 views aligned" in r["aligned"] for r in recs)
    ds = FolderDataset(out)
    assert ds.names == ["room0/depth", "room1/depth"]
    for i, name in enumerate(ds.names):
        sample = ds[i]
        true = truth[name.split("/")[0]]
        assert sample.depth.shape == true.shape  # 168 px: the photos' own size
        known = (sample.depth > 0) & (true > 0)
        assert known.mean() > 0.3
        rel = np.abs(sample.depth[known] / true[known] - 1)
        assert np.median(rel) < 0.25, np.median(rel)  # metric: the teacher's depth, at the measured scale
    run = tmp_path / "run"
    # the tests run inside torch.no_grad() (conftest): train() turns autograd on itself
    assert main(["train", "--data", str(out), "-o", str(run), "--steps", "2", "--batch-size", "1", "--size", "42x56",
                 "--views", "2-2", "--progress", "none", "--save-every", "2"]) == 0
    assert (run / "model.safetensors").is_file() and len((run / "train_log.jsonl").read_text().splitlines()) == 2


def test_ray_is_an_optional_extra_nothing_imports():
    code = ("import sys, da3_plugins.cli, da3_plugins.batch, da3_plugins.ray_backend, da3_plugins.runner, "
            "da3_plugins.core, da3_plugins.open3d; print('ray' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "False", run.stderr
