"""Ray (issue 16): a local instance with 2 CPUs, listening on 127.0.0.1 only, started by these
tests and stopped afterwards.  Batches on Ray equal the serial runs, a killed worker's scene is
retried, and ``da3p reconstruct --ray`` on a chunked input equals the serial result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's loopback-only mode, read at import
ray = pytest.importorskip("ray")

from test_batch import COMMON, DEMO, load_arrays, make_scenes  # noqa: E402

from da3_plugins.batch import BatchSettings, find_jobs, run_batch  # noqa: E402
from da3_plugins.cli import main  # noqa: E402
from da3_plugins.core.options import ReconstructOptions  # noqa: E402
from da3_plugins.ray_backend import ModelLoader, RayChunkPool, WorkerSpec  # noqa: E402
from da3_plugins.runner import Progress  # noqa: E402

RTOL = 1e-5  # Ray workers run torch on 1 thread, the serial run on 2: summation order only


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _listening(pids):
    import psutil

    return [(c.laddr.ip, c.laddr.port, c.pid) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_ray_listens_on_loopback_only(local_ray):
    import psutil

    names = ("raylet", "gcs_server", "ray::")
    pids = {p.pid for p in psutil.process_iter(["name", "cmdline"])
            if any(n in (p.info["name"] or "") or n in " ".join(p.info["cmdline"] or []) for n in names)}
    pids.add(os.getpid())
    sockets = _listening(pids)
    assert sockets, "found no Ray server sockets to check"
    assert all(_loopback(ip) for ip, _, _ in sockets), sockets


def _loopback(ip: str) -> bool:
    import ipaddress

    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def _assert_same_scene(a_path: Path, b_path: Path) -> None:
    a, b = load_arrays(a_path), load_arrays(b_path)
    assert a.keys() == b.keys()
    for k in a:
        if k == "options_json":  # the joints' fit statistics move in the last digits with the depth
            ja, jb = json.loads(str(a[k])), json.loads(str(b[k]))
            strip = lambda o: {**o, "joints": [(j["kind"], j["a"], j["b"], j["views"], j["used"]) for j in o["joints"]]}  # noqa: E731
            assert strip(ja) == strip(jb)
            for x, y in zip(ja["joints"], jb["joints"]):
                assert abs(x["scale"] - y["scale"]) < 1e-3 * abs(y["scale"]) and abs(x["points"] - y["points"]) <= 0.01 * y["points"]
        elif a[k].dtype.kind == "f":
            scale = max(1.0, float(np.abs(b[k]).max())) if b[k].size else 1.0
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=RTOL * scale, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_on_ray_equals_serial_and_reports_the_bad_scene(local_ray, tmp_path):
    root = make_scenes(tmp_path / "root")
    settings = BatchSettings(output=str(tmp_path / "ray"), model="embedded", exports=("scene", "ply"),
                             options=ReconstructOptions(process_res=168))
    records = run_batch(find_jobs(str(root)), settings, Progress(), load_model=ModelLoader("cpu"),
                        ray={"address": None, "spec": WorkerSpec(workers=2)})
    by = {r.scene: r for r in records}
    assert by["s5_bad"].status == "failed" and by["s5_bad"].code == 2 and "IMG_0001.png" in by["s5_bad"].error
    assert not (tmp_path / "ray" / "s5_bad").exists()
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["batch.jsonl", "s1_kitchen", "s2", "s3", "s4"]
    for name in ("s1_kitchen", "s2", "s3", "s4"):
        assert by[name].status == "ok"
        single = tmp_path / f"single_{name}"
        assert main(["reconstruct", str(root / name), "-o", str(single), *COMMON, "--export", "scene,ply"]) == 0
        _assert_same_scene(tmp_path / "ray" / name / "scene.npz", single / "scene.npz")
        assert (tmp_path / "ray" / name / "points.ply").stat().st_size == (single / "points.ply").stat().st_size


class DyingLoader:
    """Loads the model, but the first worker to call it dies on the spot (once, across the
    cluster: a marker file says it happened), in the middle of its scene."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, source, precision):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return ModelLoader("cpu")(source, precision)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer or a lost node would


def test_a_killed_worker_is_replaced_and_its_scene_retried(local_ray, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    root = make_scenes(tmp_path / "root", bad=False)
    marker = tmp_path / "died"
    settings = BatchSettings(output=str(tmp_path / "out"), model="embedded", exports=("scene",),
                             options=ReconstructOptions(process_res=112))
    records = run_batch(find_jobs(str(root)), settings, Progress(), load_model=DyingLoader(str(marker)),
                        ray={"address": None, "spec": WorkerSpec(workers=2, retries=2)})
    assert marker.is_file()  # a worker did die
    assert [r.status for r in records] == ["ok"] * 4, [(r.scene, r.error) for r in records]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["batch.jsonl", "s1_kitchen", "s2", "s3", "s4"]


def test_chunk_passes_on_ray_equal_the_serial_run(local_ray, tmp_path):
    from da3_plugins.core import load_model

    model = load_model("embedded", device="cpu")
    photos = sorted(str(p) for p in DEMO.glob("view_*.png"))
    opts = dict(process_res=168, max_views_per_pass=3, chunk_overlap=1, seed=0)
    serial = model.reconstruct(photos, **opts)
    pool = RayChunkPool("embedded", None, WorkerSpec(workers=2), loader=ModelLoader("cpu"))
    try:
        pooled = model.reconstruct(photos, pool=pool, **opts)
    finally:
        pool.close()
    assert serial.options.passes == pooled.options.passes >= 3
    assert serial.options.alignment == pooled.options.alignment
    for k in ("depth", "conf", "extrinsics", "intrinsics"):
        a, b = getattr(pooled, k), getattr(serial, k)
        np.testing.assert_allclose(a, b, rtol=0, atol=RTOL * max(1.0, float(np.abs(b).max())), err_msg=k)


def test_cli_batch_and_reconstruct_with_ray(tmp_path):
    """As a user runs them: each command starts its own local Ray instance and stops it."""
    root = make_scenes(tmp_path / "root", bad=False)
    shutil.rmtree(root / "s3")
    shutil.rmtree(root / "s4")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "da3_plugins.cli"]
    run = subprocess.run([*cmd, "batch", str(root), "-o", str(out), "--model", "embedded", "--process-res", "112",
                          "--export", "scene", "--ray", "--workers", "2", "--progress", "json"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    scenes = [e for e in events if e["event"] == "scene"]
    assert sorted(e["scene"] for e in scenes) == ["s1_kitchen", "s2"] and {e["status"] for e in scenes} == {"ok"}
    assert events[-1]["event"] == "done" and events[-1]["ok"] == 2 and events[-1]["code"] == 0
    again = subprocess.run([*cmd, "batch", str(root), "-o", str(out), "--model", "embedded", "--process-res", "112",
                            "--export", "scene", "--ray"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "2 skipped" in again.stdout  # nothing to do: no Ray needed either
    assert "Ray: started" not in again.stderr
    rec = subprocess.run([*cmd, "reconstruct", str(DEMO), "-o", str(tmp_path / "long"), "--model", "embedded",
                          "--process-res", "112", "--max-views", "3", "--chunk-overlap", "1", "--export", "scene",
                          "--ray", "--workers", "2", "--progress", "none"], capture_output=True, text=True, timeout=600)
    assert rec.returncode == 0, rec.stderr
    serial = tmp_path / "serial"
    assert main(["reconstruct", str(DEMO), "-o", str(serial), "--model", "embedded", "--process-res", "112",
                 "--max-views", "3", "--chunk-overlap", "1", "--export", "scene", "--progress", "none"]) == 0
    _assert_same_scene(tmp_path / "long" / "scene.npz", serial / "scene.npz")
