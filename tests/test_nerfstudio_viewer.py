"""The nerfstudio viewer shows a da3-splat scene on a CPU-only machine, in a real browser
(issue 17): a run trained for a few steps, the viewer served on 127.0.0.1
(``tests/viewer_session.py``: what ``ns-viewer --load-config`` starts, plus the browser placed at
the first training camera), headless Chromium (Debian's ``chromium``, driven by Playwright) opens
the page, and the rendered frame it shows matches the model's own render (our core rasteriser)
from the same camera."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.host
pytest.importorskip("nerfstudio")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
         "--enable-unsafe-swiftshader"]  # WebGL in software: the viewer draws with three.js
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from da3_plugins.core.synthetic import make_scene

    tmp = tmp_path_factory.mktemp("splat")
    scene = make_scene(num_views=6, height=84, width=112, seed=2)
    data = scene.to_reconstruction(conf=np.full(scene.depth.shape, 2.0, np.float32)).save(tmp / "scene.npz")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TORCH_HOME=str(tmp / "torch"))
    run = subprocess.run([str(BIN / "ns-train"), "da3-splat", "--data", str(data), "--max-num-iterations", "20",
                          "--machine.device-type", "cpu", "--vis", "tensorboard", "--output-dir", str(tmp / "out")],
                         capture_output=True, text=True, env=env, timeout=900, cwd=tmp)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return next((tmp / "out").rglob("config.yml")), env


def test_viewer_shows_the_scene_in_headless_chromium(trained, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from PIL import Image

    config, env = trained
    port = _free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "viewer_session.py"), str(config), str(port), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=config.parent)
    try:
        deadline = time.time() + 180
        while not (tmp_path / "ready").exists():
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.time() < deadline, "the viewer did not start"
            time.sleep(0.5)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 600})
                page.goto(f"http://127.0.0.1:{port}")
                deadline = time.time() + 120
                while not (tmp_path / "reference.png").exists():
                    assert time.time() < deadline, "the browser never connected to the viewer"
                    time.sleep(0.5)
                # the frame shown is the viewer's render of the camera the browser now has
                page.wait_for_function("() => document.body.innerText.includes('Resolution')", timeout=60_000)
                time.sleep(4)
                page.locator("canvas").first.screenshot(path=str(tmp_path / "canvas.png"))
                page.screenshot(path=str(tmp_path / "page.png"))
            finally:
                browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    cam = json.loads((tmp_path / "camera.json").read_text())
    canvas = Image.open(tmp_path / "canvas.png").convert("RGB")
    w, h = int(round(canvas.height * cam["aspect"])), canvas.height  # the part not under the side panel
    shot = np.asarray(canvas.crop((0, 0, w, h)), np.float32) / 255
    ref = np.asarray(Image.open(tmp_path / "reference.png").convert("RGB").resize((w, h), Image.BILINEAR),
                     np.float32) / 255
    keep = np.ones((h, w), bool)
    keep[-80:, :80] = False  # the axes gizmo
    assert shot[keep].std() > 0.03, "the viewer shows a blank frame"
    mad = np.abs(shot - ref).mean(-1)[keep].mean()
    corr = np.corrcoef(shot.mean(-1)[keep], ref.mean(-1)[keep])[0, 1]
    mirrored = np.abs(shot[:, ::-1] - ref).mean(-1)[keep].mean()
    print(f"viewer frame vs our render from the same camera: mean abs diff {mad:.4f} (mirrored {mirrored:.4f}), "
          f"correlation {corr:.3f}")
    assert mad < 0.03 and corr > 0.9 and mirrored > 2 * mad
