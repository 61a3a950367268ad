"""DA3 as a camera tracker in headless Blender (the ``bpy`` module, a separate process).

A synthetic room is filmed by a moving camera of known poses (``core.synthetic.make_shot``),
written as an mp4 with the project's writer and as a numbered PNG sequence; the ground-truth
predictor reconstructs both through the real pipeline (which records where the frames came
from), and the add-on imports the scene files: one camera keyed on every frame, checked frame
by frame through Blender's ``world_to_camera_view`` against the true pixels; then the rescale
operator, the scene settings, the footage binding, and a reconstruction of a video through the
worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.host
pytest.importorskip("bpy")

from da3_plugins.blender_build import build_extension  # noqa: E402
from da3_plugins.core import conventions as conv  # noqa: E402
from da3_plugins.core.export.video import write_video  # noqa: E402
from da3_plugins.core.pipeline import reconstruct  # noqa: E402
from da3_plugins.core.reconstruction import GaussianSet, Reconstruction  # noqa: E402
from da3_plugins.core.synthetic import GroundTruthPredictor, make_scene, make_shot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 16
FPS = 25


def _in_reconstruction_frame(rec: Reconstruction, true_w2c: np.ndarray, world: np.ndarray) -> np.ndarray:
    """True world points carried into the reconstruction's world: the ground-truth predictor's
    frame is its first view's camera, scaled; the scale is read off the camera centres."""
    true_c = conv.camera_centers(true_w2c)
    rec_c = rec.camera_centers
    s = np.median(np.linalg.norm(rec_c[1:] - rec_c[0], axis=1) / np.linalg.norm(true_c[1:] - true_c[0], axis=1))
    x0 = world @ true_w2c[0, :3, :3].T + true_w2c[0, :3, 3]
    return s * x0


def _pixels(true_w2c: np.ndarray, k: np.ndarray, world: np.ndarray) -> np.ndarray:
    cam = np.einsum("nij,mj->nmi", true_w2c[:, :3, :3], world) + true_w2c[:, None, :3, 3]
    uv = np.einsum("nij,nmj->nmi", k, cam)
    return uv[..., :2] / uv[..., 2:], cam[..., 2]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    work = tmp_path_factory.mktemp("blender_video")
    zip_path = build_extension(work / "dist")
    scene, ext, ks, images, depth = make_shot(N_FRAMES, seed=3)
    write_video(work / "shot.mp4", images, fps=FPS)
    (work / "frames").mkdir()
    from PIL import Image

    for i, img in enumerate(images):
        Image.fromarray(img).save(work / "frames" / f"frame_{i + 1:04d}.png")
    gt = GroundTruthPredictor(ext, ks, depth)
    rec = reconstruct(gt, work / "shot.mp4", fps=None, process_res=168)
    rec.save(work / "shot.npz")
    files = sorted((work / "frames").iterdir())[::2]
    seq = reconstruct(GroundTruthPredictor(ext[::2], ks[::2], depth[::2]), files, process_res=168)
    seq.save(work / "sequence.npz")

    # true points: pixels of the true depth maps, seen by every frame
    world = scene.to_reconstruction().world_points()[::5, 7::13, 5::13].reshape(-1, 3).astype(np.float64)
    pix, z = _pixels(ext, ks, world)
    keep = (z > 0.2).all(0) & (pix > 1).all((0, 2)) & (pix[..., 0] < 167).all(0) & (pix[..., 1] < 125).all(0)
    world, pix = world[keep][:150], pix[:, keep][:, :150]
    # the usual case: the network sees smaller pictures than the footage (84 x 70 of 168 x 126,
    # not even the same aspect); the camera must still fit the footage's own pixels
    low_ks = conv.rescale_intrinsics(ks, (126, 168), (70, 84))
    _, low_depth = scene.render_views(ext, low_ks, height=70, width=84)
    low = reconstruct(GroundTruthPredictor(ext, low_ks, low_depth), work / "shot.mp4", fps=None, process_res=84)
    assert low.images.shape[1:3] == (70, 84)
    low.save(work / "lowres.npz")

    # non-square pixels (anamorphic footage): fy = 0.8 fx
    an_ks = ks.copy()
    an_ks[:, 1, 1] *= 0.8
    an_images, an_depth = scene.render_views(ext, an_ks)
    write_video(work / "anamorphic.mp4", an_images, fps=FPS)
    an = reconstruct(GroundTruthPredictor(ext, an_ks, an_depth), work / "anamorphic.mp4", fps=None, process_res=168)
    an.save(work / "anamorphic.npz")
    an_pix, _ = _pixels(ext, an_ks, world)

    # a zoom: the focal length grows 30 % over the shot (the same camera path)
    zoom_ks = ks.copy()
    zoom_ks[:, :2, :2] *= np.linspace(1.0, 1.3, N_FRAMES)[:, None, None]
    zoom_images, zoom_depth = scene.render_views(ext, zoom_ks)
    write_video(work / "zoom.mp4", zoom_images, fps=FPS)
    zoom = reconstruct(GroundTruthPredictor(ext, zoom_ks, zoom_depth), work / "zoom.mp4", fps=None, process_res=168)
    zoom.save(work / "zoom.npz")
    zoom_pix, _ = _pixels(ext, zoom_ks, world)
    np.savez(work / "truth.npz", frames=np.arange(1, N_FRAMES + 1), pixels=pix,
             low_points_blender=conv.points_to_blender(_in_reconstruction_frame(low, ext, world)),
             an_pixels=an_pix, an_points_blender=conv.points_to_blender(_in_reconstruction_frame(an, ext, world)),
             zoom_pixels=zoom_pix, zoom_points_blender=conv.points_to_blender(_in_reconstruction_frame(zoom, ext, world)),
             points_blender=conv.points_to_blender(_in_reconstruction_frame(rec, ext, world)),
             seq_frames=np.arange(1, N_FRAMES + 1, 2), seq_pixels=pix[::2],
             seq_points_blender=conv.points_to_blender(_in_reconstruction_frame(seq, ext[::2], world)))

    # Gaussians and depth for depth meshes; an older scene file (no frame fields)
    small = make_scene(num_views=4, height=84, width=112, seed=5)
    q = np.tile([1.0, 0, 0, 0], (3, 1))
    gs = GaussianSet(means=np.array([[0, 0, 3.0], [0.5, 0, 3], [1, 0, 3]]), scales=np.tile([0.2, 0.02, 0.02], (3, 1)),
                     rotations=q, harmonics=np.zeros((3, 3, 9)), opacities=np.array([0.9, 0.5, 0.8]))
    old = small.to_reconstruction()
    Reconstruction(images=old.images[:1], depth=old.depth[:1], extrinsics=old.extrinsics[:1],
                   intrinsics=old.intrinsics[:1], gaussians=gs).save(work / "splats.npz")
    old.save(work / "old.npz")

    # a long shot: 2000 frames (tiny pictures; the keys are what is timed)
    from da3_plugins.core.options import SceneOptions

    n = 2000
    angles = np.linspace(0, 4 * np.pi, n)
    long_ext = np.zeros((n, 3, 4))
    for i, a in enumerate(angles):  # turning about y, moving along x
        r = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        long_ext[i, :, :3], long_ext[i, :, 3] = r, -r @ np.array([0.001 * i, 0, 0])
    Reconstruction(images=np.zeros((n, 14, 14, 3), np.uint8), depth=np.ones((n, 14, 14), np.float32),
                   extrinsics=long_ext, intrinsics=np.tile(np.array([[12.0, 0, 7], [0, 12, 7], [0, 0, 1]]), (n, 1, 1)),
                   options=SceneOptions(frame_source=str(work / "missing.mp4"), frame_source_kind="video",
                                        frame_rate=30.0, frame_indices=tuple(range(n)))).save(work / "long.npz")
    np.save(work / "long_truth.npy", conv.opencv_w2c_to_blender_matrix_world(long_ext))
    (work / "bad.mp4").write_bytes(b"this is not a video")

    # the worker's footage: 10 frames at 10 fps
    write_video(work / "small.mp4", images[:10], fps=10)
    (work / "da3p").symlink_to(Path(sys.executable).with_name("da3p"))
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(work / "user"), XDG_CACHE_HOME=str(work / "cache"),
               HOME=str(work / "home"))
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "blender_video_session.py"), str(zip_path), str(work)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["work"], out["rec"], out["seq"] = work, rec, seq
    return out


def test_the_pipeline_records_where_the_frames_came_from(session):
    rec, seq, work = session["rec"], session["seq"], session["work"]
    assert rec.frames.kind == "video" and rec.frames.path == str((work / "shot.mp4").resolve())
    assert rec.frames.rate == pytest.approx(FPS) and rec.frames.indices == tuple(range(N_FRAMES))
    assert seq.frames.kind == "image_sequence" and seq.frames.path == str((work / "frames").resolve())
    assert seq.frames.indices == tuple(range(1, N_FRAMES + 1, 2)) and seq.frames.rate == 0
    assert Reconstruction.load(work / "shot.npz").frames == rec.frames
    assert Reconstruction.load(work / "old.npz").frames is None


def test_a_video_becomes_one_animated_camera(session):
    assert session["import_result"] == ["FINISHED"]
    assert session["n_cameras"] == 1 and session["scene_camera_is_it"]
    expected = {f"{p}[{i}]": N_FRAMES for p in ("location", "rotation_euler") for i in range(3)}
    assert session["keys"] == expected
    assert session["lens_animated"] is False  # the true focal length is constant
    assert session["points"] == 1


def test_every_frame_projects_true_points_to_true_pixels(session):
    print(f"max projection error over {N_FRAMES} frames: {session['projection_error_px']:.2e} px "
          f"(image sequence: {session['sequence']['projection_error_px']:.2e} px)")
    assert session["projection_error_px"] < 0.01
    assert session["sequence"]["projection_error_px"] < 0.01


def test_footage_larger_than_the_networks_pictures_is_exact_at_its_own_size(session):
    low = session["lowres"]
    assert low["resolution"] == [168, 126] and low["pixel_aspect"] == [1.0, 1.0]
    print(f"84 x 70 network input, 168 x 126 footage: max projection error {low['projection_error_px']:.2e} px")
    assert low["projection_error_px"] < 0.01


def test_non_square_pixels_become_the_scenes_pixel_aspect(session):
    an = session["anamorphic"]
    assert an["pixel_aspect"] == pytest.approx([1.0, 1.25])  # fx / fy
    print(f"anamorphic (fy = 0.8 fx): max projection error {an['projection_error_px']:.2e} px")
    assert an["projection_error_px"] < 0.01


def test_a_zoom_animates_the_lens_and_stays_exact(session):
    zoom = session["zoom"]
    assert zoom["lens_animated"] and zoom["lens_keys"] == N_FRAMES
    assert zoom["lens_last_over_first"] == pytest.approx(1.3, rel=1e-6)
    print(f"zoom: max projection error {zoom['projection_error_px']:.2e} px")
    assert zoom["projection_error_px"] < 0.01


def test_frame_range_rate_and_resolution_are_the_videos(session):
    assert session["frame_range"] == [1, N_FRAMES]
    fps, base = session["fps"]
    assert fps / base == pytest.approx(FPS)
    assert session["resolution"] == [168, 126, 100]
    assert session["pixel_aspect"] == [1.0, 1.0]


def test_the_footage_is_the_cameras_background_in_sync(session):
    (bg,) = session["backgrounds"]
    assert session["show_background"]
    assert bg["source"] == "MOVIE_CLIP" and bg["clip"] == str((session["work"] / "shot.mp4").resolve())
    # clip frame 1 (the video's frame 0) at scene frame 1, where frame 0's key is
    assert bg["clip_frame_start"] == 1 and bg["clip_frame_offset"] == 0
    assert bg["clip_frames"] == N_FRAMES and bg["clip_size"] == [168, 126]
    # by pixels: the clip rendered at scene frames 1, 6, 16 is the video's frame 0, 5, 15
    # (mean difference ~1 level of mp4 rounding; the next best frame is far off)
    shown = session["clip_shown"]
    print(f"clip by pixels (frame shown, mean difference, next best): {shown}; sequence: {session['sequence']['clip_shown']}")
    assert [s[0] for s in shown] == [0, 5, 15], shown
    assert all(s[1] < 3 and s[2] > 5 * s[1] for s in shown), shown
    seq = session["sequence"]
    assert session["sequence_default_cameras"] == N_FRAMES // 2  # numbered photos look alike: off by default
    assert seq["cameras"] == 1 and seq["key_frames"] == list(range(1, N_FRAMES + 1, 2))
    assert seq["clip_source"] == "SEQUENCE" and seq["clip_file"].endswith("frame_0001.png")
    assert seq["clip_frame_start"] == 1 and seq["frame_range"] == [1, N_FRAMES - 1]
    # scene frames 1 and 7 show files frame_0001 and frame_0007 (0-based 0 and 6), where their keys are
    assert [s[0] for s in seq["clip_shown"]] == [0, 6] and all(s[1] < 1 for s in seq["clip_shown"]), seq["clip_shown"]


def test_rescale_keeps_projections_and_scales_distances(session):
    assert session["rescale_result"] == ["FINISHED"]
    assert session["distance_after"] == pytest.approx(2.0, rel=1e-5)
    assert session["scale_property"] == pytest.approx(session["factor"], rel=1e-6)
    assert session["units_after"].startswith("metres")
    assert session["camera_location_ratio_error"] < 1e-5
    print(f"after rescale x{session['factor']:.4f}: {session['projection_error_after_rescale_px']:.2e} px; "
          f"after x0.5 more: {session['projection_error_after_factor_px']:.2e} px")
    assert session["projection_error_after_rescale_px"] < 0.01
    assert session["rescale_factor_result"] == ["FINISHED"]
    assert session["camera_location_ratio_error_2"] < 1e-5
    assert session["projection_error_after_factor_px"] < 0.01
    assert session["scale_property_2"] == pytest.approx(0.5 * session["factor"], rel=1e-6)


def test_rescale_moves_gaussians_and_depth_meshes(session):
    assert session["splat_scale_ratio_error"] < 1e-5
    assert session["splat_mean_ratio_error"] < 1e-5
    assert session["depth_mesh_ratio_error"] < 1e-6


def test_a_wrong_selection_is_refused_and_changes_nothing(session):
    assert session["rescale_bad"][0] == "ERROR"
    assert "select exactly two vertices" in session["rescale_bad"][1]
    assert session["rescale_bad_unchanged"]


def test_older_scene_files_import_as_separate_cameras(session):
    assert session["old_cameras"] == 4 and not session["old_animated"]
    assert session["unanimated_cameras"] == N_FRAMES


def test_a_failed_import_leaves_nothing_behind(session):
    assert "disk full" in session["broken_import"]
    assert session["broken_left_nothing"]
    assert session["broken_kept_settings"] == [5, 77, 13]


def test_reconstruct_a_video_through_the_worker(session):
    runs = session["worker"]
    every = runs["every"]
    assert every["result"] == ["FINISHED"] and every["cameras"] == 1
    assert every["key_frames"] == list(range(1, 11)) and every["frame_range"] == [1, 10]
    assert every["fps"] == 10 and every["resolution"] == [168, 126] and every["background"] == "MOVIE_CLIP"
    print(f"worker reconstruction of 10 frames: {every['seconds']:.1f} s (model load included)")
    assert runs["stride2"]["key_frames"] == [1, 3, 5, 7, 9]
    seq = runs["sequence"]  # frame_0001.png, frame_0003.png, ... : scene frames 1, 3, ...
    assert seq["result"] == ["FINISHED"] and seq["cameras"] == 1 and seq["clip_source"] == "SEQUENCE"
    assert seq["key_frames"] == list(range(1, N_FRAMES + 1, 2))
    panel = runs["panel"]
    assert panel["result"] == ["FINISHED"] and panel["cameras"] == 1
    assert panel["key_frames"] == [1, 4, 7, 10]
    # the long-input settings reached the pipeline: chunks of 3 overlapping by 2, loop closure off
    for text in ("max_views_per_pass=3", "chunk_overlap=2", "loop_closure='off'", "passes=2", "'scale_factor': 2.0"):
        assert text in panel["options"], (text, panel["options"])


def test_a_point_budget_keeps_that_many_points(session):
    assert session["budget_points"] == 1000


def test_a_long_shot_imports_quickly_and_exactly(session):
    long = session["long"]
    print(f"2000-frame shot: one camera, {long['keys']} keys per channel, imported in {long['seconds']:.2f} s; "
          f"max matrix error {long['max_matrix_error']:.1e}")
    assert long["keys"] == 2000 and long["frame_range"] == [1, 2000] and long["fps"] == 30
    assert long["max_matrix_error"] < 1e-5  # Euler keys without flips: the pose on every frame
    assert long["background"] == 0  # the recorded video is gone: no clip, the camera still imports
    assert long["seconds"] < 20


def test_a_bad_video_is_one_line_and_changes_nothing(session):
    bad = session["bad_video"]
    assert bad["result"][0] == "ERROR" and "bad.mp4" in bad["result"][1], bad
    assert bad["objects_added"] == 0 and bad["clips_added"] == 0


def test_the_reconstruct_panel_shows_what_artists_use(session):
    shown = set(session["panel_shows"])
    wanted = {"source", "model", "process_res", "ref_view", "ray_pose", "threshold", "frame_stride", "fps",
              "max_views", "chunk_overlap", "loop_closure", "scale", "animated", "image_sequence", "max_points",
              "mesh_every", "da3.reconstruct"}
    assert wanted <= shown, wanted - shown


def test_uninstall_removes_the_new_classes(session):
    assert not session["after_uninstall_settings"] and not session["after_uninstall_rescale"]
