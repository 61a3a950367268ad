"""The nerfstudio issue's step-0 claim, measured: ``da3-splat`` started from ground-truth
Gaussians (exact depth) renders views it was not built from at PSNR >= 25 dB, and a short
refinement does not lower that.

Scene: ``make_scene("inside", num_views=9, height=126, width=168, seed=...)`` -- a closed room
seen by cameras near its centre that turn through 90 degrees (a few pixels of parallax
between neighbours), every pixel a textured surface.  The even views 0, 2, 4, 6, 8 are the
training views; the odd views 1, 3, 5, 7 are held out: each lies on the arc halfway (11
degrees) between two training views, and neither its photo nor its depth reaches the method.
The training views see all but a sliver of what the held-out views see.  Two scenes (seeds 0
and 1) for step 0; the refinement on seed 0.

Why not the default ``"room"`` kind: there the cameras circle objects on a fine checkered floor
seen at grazing angles, and the ray-cast photos (one sample per pixel, no anti-aliasing) alias
it.  Even an exact bilinear warp of a neighbouring training photo scores only about 28 dB on
the pixels it sees, and the step-0 splats score 22-25 dB: they draw the checker's aliased edges
a little softer everywhere.  That scene tests the renderer's reconstruction filter more than
the method.

Route, the one users take (``ns-train da3-splat --data scene.npz``), in process: the training
views' ground truth (``scene.to_reconstruction()``: exact depth and cameras, no confidence)
saved as a scene file -> the ``da3-data`` dataparser (seed points, one Gaussian each, scale
and opacity) -> the registered ``da3-splat`` TrainerConfig, set up by nerfstudio's ``Trainer``
on the CPU -> ``model.get_outputs`` (the CPU path, ``core.render``) for a nerfstudio
``Cameras`` at the held-out pose, carried into the dataparser's frame by the dataparser's own
transform and scale.  The refinement is ``Trainer.train`` for ``STEPS`` steps: the method's
own loss, optimisers and schedulers.
"""

from __future__ import annotations

import copy
import dataclasses
import random

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.host
pytest.importorskip("nerfstudio")

from nerfstudio.cameras.cameras import Cameras, CameraType  # noqa: E402

from da3_plugins.core import conventions as conv  # noqa: E402
from da3_plugins.core.synthetic import make_scene  # noqa: E402
from da3_plugins.nerfstudio.method import da3_splat  # noqa: E402
from nerfstudio.utils import writer  # noqa: E402  (after nerfstudio's engine: a circular import otherwise)

NUM_VIEWS = 9
TRAIN = list(range(0, NUM_VIEWS, 2))
HELD_OUT = list(range(1, NUM_VIEWS, 2))
MIN_PSNR = 25.0
STEPS = 20
# Refining minimises the loss on the training views, not on each held-out view: a held-out view
# may move by a few hundredths of a dB either way (and float sums differ a little between
# machines), so "does not lower it" allows 0.1 dB.
NOISE_DB = 0.1


@pytest.fixture
def one_thread():
    """One thread (this machine's other core is busy); nerfstudio's global log writers as they
    were (the Trainer registers its own)."""
    threads = torch.get_num_threads()
    saved = list(writer.EVENT_WRITERS), list(writer.EVENT_STORAGE), dict(writer.GLOBAL_BUFFER)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    writer.EVENT_WRITERS[:], writer.EVENT_STORAGE[:] = saved[0], saved[1]
    writer.GLOBAL_BUFFER.clear()
    writer.GLOBAL_BUFFER.update(saved[2])


def _psnr(rgb: torch.Tensor, photo: np.ndarray) -> float:
    truth = torch.from_numpy(photo).to(rgb) / 255.0
    return float(-10.0 * torch.log10(((rgb.clamp(0, 1) - truth) ** 2).mean()))


def _camera(scene, i: int, transform: np.ndarray, scale: float) -> Cameras:
    """View i of the scene as a nerfstudio camera in the dataparser's frame (the dataparser's
    map of the training poses: OpenGL camera-to-world, then its transform, then its scale)."""
    c2w = transform @ conv.opencv_w2c_to_opengl_c2w(scene.extrinsics[i])
    c2w[:3, 3] *= scale
    k = scene.intrinsics[i]
    h, w = scene.depth.shape[1:]
    return Cameras(camera_to_worlds=torch.from_numpy(c2w[:3]).float()[None], fx=float(k[0, 0]), fy=float(k[1, 1]),
                   cx=float(k[0, 2]), cy=float(k[1, 2]), width=w, height=h, camera_type=CameraType.PERSPECTIVE)


def _setup(tmp_path, seed: int):
    """(scene, trainer, held-out cameras): da3-splat set up from the training views' truth."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    scene = make_scene("inside", num_views=NUM_VIEWS, height=126, width=168, seed=seed)
    truth = scene.to_reconstruction()
    train = dataclasses.replace(
        truth, images=truth.images[TRAIN], depth=truth.depth[TRAIN], extrinsics=truth.extrinsics[TRAIN],
        intrinsics=truth.intrinsics[TRAIN], image_names=[truth.image_names[i] for i in TRAIN],
        original_sizes=None, pixel_transform=None)
    data = train.save(tmp_path / "train.npz")

    config = copy.deepcopy(da3_splat.config)
    config.data = config.pipeline.datamanager.data = data
    parser = config.pipeline.datamanager.dataparser
    parser.data, parser.cache_dir, parser.train_split_fraction = data, tmp_path / "cache", 1.0
    config.machine.device_type = "cpu"
    config.vis = "tensorboard"
    config.output_dir = tmp_path / "out"
    config.max_num_iterations = STEPS
    config.viewer.quit_on_train_completion = True
    config.set_timestamp()
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    pipeline = trainer.pipeline
    assert not pipeline.model.means.is_cuda  # the CPU path: core.render

    outputs = pipeline.datamanager.train_dataparser_outputs
    transform = np.vstack([outputs.dataparser_transform.double().numpy(), [0, 0, 0, 1]])
    scale = outputs.dataparser_scale
    # the held-out poses take the training poses' route: checked on the training poses
    ours = torch.stack([_camera(scene, i, transform, scale).camera_to_worlds[0] for i in TRAIN])
    np.testing.assert_allclose(ours.numpy(), pipeline.datamanager.train_dataset.cameras.camera_to_worlds.numpy(),
                               atol=1e-5)
    # the Gaussians are the training views' depth points, nothing else
    seeds = outputs.metadata["points3D_xyz"]
    assert "da3_gaussians" not in outputs.metadata and len(seeds) > 10_000
    assert torch.equal(pipeline.model.means.detach(), seeds.float())
    return scene, trainer, [_camera(scene, i, transform, scale) for i in HELD_OUT], scale


def _render(pipeline, cameras) -> list:
    pipeline.eval()
    with torch.no_grad():
        return [pipeline.model.get_outputs(cam) for cam in cameras]


@pytest.mark.parametrize("seed", [0, 1])
def test_step0_renders_held_out_views(tmp_path, one_thread, seed):
    scene, trainer, cameras, scale = _setup(tmp_path, seed)
    renders = _render(trainer.pipeline, cameras)
    psnr = [_psnr(out["rgb"], scene.images[i]) for out, i in zip(renders, HELD_OUT)]
    # a neighbouring training photo as the guess of a held-out view, for comparison
    guess = [max(_psnr(torch.from_numpy(scene.images[j]) / 255.0, scene.images[i]) for j in (i - 1, i + 1))
             for i in HELD_OUT]
    print(f"\nseed {seed}, held-out views {HELD_OUT}: step-0 PSNR " + ", ".join(f"{x:.2f}" for x in psnr)
          + " dB (the better neighbouring training photo: " + ", ".join(f"{x:.2f}" for x in guess) + " dB)")
    assert min(psnr) >= MIN_PSNR, f"step-0 PSNR {psnr} below {MIN_PSNR} dB"
    assert all(p > g + 5.0 for p, g in zip(psnr, guess))
    # the splats cover the held-out views and lie at their true depth
    for out, i in zip(renders, HELD_OUT):
        covered = out["accumulation"][..., 0].numpy() > 0.5
        rel = np.abs(out["depth"][..., 0].numpy() / scale / scene.depth[i] - 1.0)[covered]
        assert covered.mean() > 0.97 and np.median(rel) < 0.01, (i, covered.mean(), np.median(rel))


def test_refinement_keeps_held_out_psnr(tmp_path, one_thread):
    scene, trainer, cameras, _ = _setup(tmp_path, 0)
    before = [_psnr(out["rgb"], scene.images[i]) for out, i in zip(_render(trainer.pipeline, cameras), HELD_OUT)]
    with torch.enable_grad():  # tests run under no_grad (conftest)
        trainer.train()
    assert trainer.pipeline.model.step == STEPS - 1
    after = [_psnr(out["rgb"], scene.images[i]) for out, i in zip(_render(trainer.pipeline, cameras), HELD_OUT)]
    print(f"\nheld-out views {HELD_OUT}: PSNR at step 0 " + ", ".join(f"{x:.2f}" for x in before)
          + f" dB, after {STEPS} refinement steps " + ", ".join(f"{x:.2f}" for x in after) + " dB")
    assert min(before) >= MIN_PSNR
    for view, b, a in zip(HELD_OUT, before, after):
        assert a >= b - NOISE_DB, f"view {view}: refinement lowered PSNR from {b:.2f} to {a:.2f} dB"
