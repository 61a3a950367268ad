"""Footage in the scene file (where the frames came from), the Blender frame conventions, the
rescale maths of ``core.metric_scale`` / ``Reconstruction.rescaled`` and the status-bar ETA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from da3_plugins.core import conventions as conv
from da3_plugins.core.export.video import write_video
from da3_plugins.core.images import frame_source, scan_images
from da3_plugins.core.metric_scale import factor_for_distance, scale_extrinsics
from da3_plugins.core.options import SceneOptions
from da3_plugins.core.pipeline import reconstruct
from da3_plugins.core.reconstruction import GaussianSet, Reconstruction
from da3_plugins.core.synthetic import GroundTruthPredictor, make_scene, make_shot

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    work = tmp_path_factory.mktemp("shot")
    scene, ext, ks, images, depth = make_shot(9, height=56, width=70, seed=1)
    write_video(work / "shot.mp4", images, fps=12)
    return work, ext, ks, images, depth


def test_a_video_records_its_path_rate_and_frames_and_round_trips(shot, tmp_path):
    work, ext, ks, images, depth = shot
    # every 2nd frame: sampled at half the video's rate
    rec = reconstruct(GroundTruthPredictor(ext[::2], ks[::2], depth[::2]), work / "shot.mp4", fps=6.0,
                      process_res=70)
    assert rec.frames.kind == "video" and rec.frames.path == str((work / "shot.mp4").resolve())
    assert rec.frames.rate == pytest.approx(12.0) and rec.frames.indices == (0, 2, 4, 6, 8)
    assert rec.image_names[1] == "shot_000002"
    for form in ("npz", "folder"):
        back = Reconstruction.load(rec.save(tmp_path / f"s_{form}", form=form))
        assert back.frames == rec.frames
        np.testing.assert_array_equal(back.extrinsics, rec.extrinsics)


def test_image_sequences_are_recognised_and_photos_are_not(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.full((20, 20, 3), 99, np.uint8))
    for name in ("f_0010.png", "f_0012.png", "f_0014.png", "f_0015.png", "holiday.png", "beach.png"):
        img.save(tmp_path / name)
    refs = scan_images([tmp_path / "f_0010.png", tmp_path / "f_0012.png", tmp_path / "f_0014.png"]).refs
    assert frame_source(refs) == {"frame_source": str(tmp_path.resolve()), "frame_source_kind": "image_sequence",
                                  "frame_rate": 0.0, "frame_indices": (10, 12, 14)}
    # an uneven step, names without numbers, a single file: no sequence
    assert frame_source(scan_images([tmp_path / f"f_00{n}.png" for n in (10, 12, 15)]).refs) == {}
    assert frame_source(scan_images([tmp_path / "holiday.png", tmp_path / "beach.png"]).refs) == {}
    assert frame_source(scan_images([tmp_path / "f_0010.png"]).refs) == {}


def test_older_scene_options_load_without_frames_and_bad_values_do_not_stop_a_load():
    old = SceneOptions.from_saved({"camera_source": "predicted", "passes": 1})
    assert old.frame_source_kind == "" and old.frame_indices == () and old.frame_rate == 0.0
    odd = SceneOptions.from_saved({"frame_rate": -3, "frame_indices": ["a"], "frame_source_kind": "film"})
    assert odd.frame_rate == 0.0 and odd.frame_indices == () and odd.frame_source_kind == ""
    assert odd.extra == {"frame_rate": -3, "frame_indices": ["a"], "frame_source_kind": "film"}
    rec = make_scene(num_views=2, height=28, width=28, seed=0).to_reconstruction()
    assert rec.frames is None
    # indices that do not match the views are ignored, not trusted
    rec.options = SceneOptions(frame_source="x.mp4", frame_source_kind="video", frame_indices=(0, 1, 2))
    assert rec.frames is None


def test_blender_frame_numbers_rate_and_focal_rule():
    np.testing.assert_array_equal(conv.blender_frame_numbers([0, 2, 4], "video"), [1, 3, 5])
    np.testing.assert_array_equal(conv.blender_frame_numbers([10, 12, 14], "image_sequence"), [1, 3, 5])
    with pytest.raises(ValueError, match="kind"):
        conv.blender_frame_numbers([0], "film")
    fps, base = conv.blender_frame_rate(30000 / 1001)
    assert fps == 30 and fps / base == pytest.approx(30000 / 1001, rel=1e-12)
    assert conv.blender_frame_rate(25) == (25, 1.0) and conv.blender_frame_rate(0) == (24, 1.0)
    assert not conv.focal_varies([500, 502, 498])  # 0.4 %: one lens
    assert conv.focal_varies([500, 500, 520])  # 4 %: a zoom


def test_rescaled_keeps_every_projection_and_scales_every_length():
    scene = make_scene(num_views=3, height=42, width=56, seed=2)
    rec = scene.to_reconstruction()
    rec.gaussians = GaussianSet(means=np.array([[0.0, 0.1, 2.0], [0.3, 0.0, 2.5]]), scales=np.full((2, 3), 0.05),
                                rotations=np.tile([1.0, 0, 0, 0], (2, 1)), harmonics=np.zeros((2, 3, 1)),
                                opacities=np.array([0.5, 0.9]))
    s = 2.5
    big = rec.rescaled(s)
    pts, big_pts = rec.world_points(), big.world_points()
    np.testing.assert_allclose(big_pts, s * pts, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(big.depth, s * rec.depth, rtol=1e-6)
    np.testing.assert_allclose(big.camera_centers, s * rec.camera_centers, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(big.intrinsics, rec.intrinsics)
    np.testing.assert_array_equal(big.extrinsics[:, :, :3], rec.extrinsics[:, :, :3])
    # the same pixels: view 0's pixels, back-projected with its depth (float64) and seen from view 1
    def project(r):
        u, v = conv.pixel_centres(r.height, r.width)
        rays = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ np.linalg.inv(r.intrinsics[0]).T
        cam0 = rays * r.depth[0].astype(np.float64).reshape(-1, 1)
        world = (cam0 - r.extrinsics[0, :, 3]) @ r.extrinsics[0, :, :3]
        cam1 = world @ r.extrinsics[1, :, :3].T + r.extrinsics[1, :, 3]
        uv = cam1 @ r.intrinsics[1].T
        return uv[:, :2] / uv[:, 2:]
    np.testing.assert_allclose(project(big), project(rec), rtol=0, atol=1e-5)  # depth is float32
    np.testing.assert_allclose(big.gaussians.means, s * rec.gaussians.means, rtol=1e-6)
    np.testing.assert_allclose(big.gaussians.scales, s * rec.gaussians.scales, rtol=1e-6)
    np.testing.assert_array_equal(big.gaussians.rotations, rec.gaussians.rotations)
    assert big.options.extra["scale_factor"] == s and big.rescaled(2).options.extra["scale_factor"] == 2 * s
    assert big.model == rec.model and big.is_metric == rec.is_metric


def test_a_known_distance_gives_the_factor_and_bad_values_name_themselves():
    assert factor_for_distance([0, 0, 0], [3, 4, 0], 2.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="pick two different points"):
        factor_for_distance([1, 1, 1], [1, 1, 1], 2.0)
    with pytest.raises(ValueError, match="length: expected a positive number"):
        factor_for_distance([0, 0, 0], [1, 0, 0], -1)
    with pytest.raises(ValueError, match="factor: expected a positive number"):
        scale_extrinsics(np.eye(4)[:3][None], float("nan"))
    rec = make_scene(num_views=2, height=28, width=28, seed=0).to_reconstruction()
    with pytest.raises(ValueError, match="factor"):
        rec.rescaled(0)


def test_status_bar_eta():
    spec = importlib.util.spec_from_file_location("worker_client", ROOT / "blender_addon" / "worker_client.py")
    wc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wc)
    clock = wc.ProgressClock()
    assert clock.text({"stage": "predict", "done": 0, "total": 10}, now=100.0) == \
        "DA3 predict: 0/10  (Esc to cancel)"
    # 2 of 10 passes in 30 s: 8 more take 2:00
    assert clock.text({"stage": "predict", "done": 2, "total": 10, "message": "pass 2"}, now=130.0) == \
        "DA3 predict: 2/10, ETA 2:00  pass 2  (Esc to cancel)"
    # a new stage restarts the clock
    assert "ETA" not in clock.text({"stage": "export", "done": 1, "total": 3}, now=131.0)
    assert wc.format_seconds(3725) == "1:02:05"


def test_the_add_ons_file_rules_are_the_cores(tmp_path):
    """The add-on lists a sequence's files itself (every n-th): the same extensions and order as
    ``core.images.list_images``."""
    import ast

    from da3_plugins.core import images

    tree = ast.parse((ROOT / "blender_addon" / "__init__.py").read_text())
    consts = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id.endswith("_EXTENSIONS")}
    assert consts == {"IMAGE_EXTENSIONS": images.IMAGE_EXTENSIONS, "VIDEO_EXTENSIONS": images.VIDEO_EXTENSIONS}
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "_every_nth_file")
    namespace = {"os": __import__("os"), "IMAGE_EXTENSIONS": images.IMAGE_EXTENSIONS}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "addon", "exec"), namespace)
    for name in ("img10.png", "img2.png", "img1.JPG", "notes.txt", ".hidden.png", "img3.webp"):
        (tmp_path / name).write_bytes(b"")
    assert namespace["_every_nth_file"](str(tmp_path), 1) == [str(p) for p in images.list_images(tmp_path)]
    assert [Path(p).name for p in namespace["_every_nth_file"](str(tmp_path), 2)] == ["img1.JPG", "img3.webp"]
