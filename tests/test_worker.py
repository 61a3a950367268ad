"""``da3p worker`` and the add-on's worker client (plain Python: no Blender needed)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from da3_plugins.core import random_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("worker_client", ROOT / "blender_addon" / "worker_client.py")
wc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wc)
DA3P = str(Path(sys.executable).with_name("da3p"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("worker")
    random_model("da3-small").save_pretrained(work / "model")
    (work / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(work / "photos" / f"p{i:02d}.png")
    return work


def test_requests_keep_the_model_loaded(setup):
    client = wc.WorkerClient(DA3P, device="cpu")
    try:
        assert client.wait(client.request("ping"))["event"] == "pong"
        seen = []
        times = []
        for k in range(2):
            t = time.perf_counter()
            rid = client.request("reconstruct", inputs=[str(setup / "photos")], output=str(setup / f"out{k}"),
                                 model=str(setup / "model"), options={"process_res": 56})
            final = client.wait(rid, on_progress=seen.append)
            times.append(time.perf_counter() - t)
            assert final["event"] == "done" and Path(final["files"]["scene"]).is_file()
        assert {e["stage"] for e in seen} >= {"model", "infer", "export"}
        loaded = client.wait(client.request("ping"))["loaded"]
        assert loaded == [str(setup / "model")]
        # bad requests get one-line errors and the worker keeps serving
        err = client.wait(client.request("reconstruct", inputs=["/nonexistent"], output=str(setup / "x")))
        assert err["event"] == "error" and err["code"] == 2 and "/nonexistent" in err["message"]
        assert not (setup / "x").exists()
        assert client.wait(client.request("ping"))["event"] == "pong"
    finally:
        client.stop()
    print(f"first request {times[0]:.2f} s (loads the model), second {times[1]:.2f} s")
    assert times[1] < times[0]


def test_cancel_mid_run_leaves_nothing(setup):
    client = wc.WorkerClient(DA3P, device="cpu")
    out = setup / "cancelled"
    client.request("reconstruct", inputs=[str(setup / "photos")], output=str(out), model=str(setup / "model"),
                         options={"process_res": 504})
    # wait until inference starts, then cancel
    deadline = time.time() + 120
    started = False
    while time.time() < deadline and not started:
        for ev in client.poll():
            started |= ev.get("event") == "progress" and ev.get("stage") == "infer"
        time.sleep(0.05)
    assert started
    client.stop()
    assert not client.alive
    time.sleep(0.2)
    assert not out.exists()
    assert [p.name for p in setup.iterdir() if p.name.startswith(".cancelled")] == []


def test_idle_timeout_and_missing_executable(setup):
    client = wc.WorkerClient(DA3P, device="cpu", idle_timeout=1.0)
    client.proc.wait(timeout=60)
    assert client.proc.returncode == 0
    with pytest.raises(wc.WorkerError, match="not found"):
        wc.WorkerClient("", device="cpu")
    with pytest.raises(wc.WorkerError, match="exited"):
        client.request("ping")


def test_warnings_during_a_run_are_not_its_end(setup, tmp_path):
    """A skipped photo is a "warning" event; the client keeps waiting for "done"."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((setup / "photos").iterdir())[:4]:
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    client = wc.WorkerClient(DA3P, device="cpu")
    try:
        rid = client.request("reconstruct", inputs=[str(photos)], output=str(tmp_path / "out"),
                             model=str(setup / "model"), options={"process_res": 56, "skip_unreadable": True})
        final = client.wait(rid)
        assert final["event"] == "done", final
        assert any("broken.png" in n and n.startswith("warning") for n in client.notes), client.notes
        from da3_plugins.core import Reconstruction

        assert len(Reconstruction.load(final["files"]["scene"])) == 4
    finally:
        client.stop()
