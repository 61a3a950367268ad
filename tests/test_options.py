"""ReconstructOptions is the one definition of the reconstruction options: it validates itself,
round-trips through JSON, and the CLI, the worker request, the nerfstudio dataparser, the scene
file and the export registry (with the README's table) all derive from it."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from da3_plugins.core.errors import OptionError, UserInputError
from da3_plugins.core.export.registry import EXPORTS, markdown_table, parse_export_list
from da3_plugins.core.options import (PRECISIONS, REF_VIEW_STRATEGIES, RESIZE_METHODS, ReconstructOptions,
                                      SceneOptions, option_defaults)

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_official_ones():
    o = ReconstructOptions()
    assert (o.process_res, o.process_res_method, o.ref_view_strategy) == (504, "upper_bound_resize", "saddle_balanced")
    assert not o.use_ray_pose and not o.infer_gs and o.align_to_input_ext_scale
    assert o.max_views_per_pass is None and o.chunk_overlap is None and o.seed == 0 and o.precision is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.process_res = 10  # type: ignore[misc]


@pytest.mark.parametrize("kwargs, field", [
    ({"process_res": 13}, "process_res"),
    ({"process_res": 504.0}, "process_res"),
    ({"process_res": True}, "process_res"),
    ({"process_res_method": "resize"}, "process_res_method"),
    ({"ref_view_strategy": "last"}, "ref_view_strategy"),
    ({"use_ray_pose": "yes"}, "use_ray_pose"),
    ({"infer_gs": 1}, "infer_gs"),
    ({"max_views_per_pass": 0}, "max_views_per_pass"),
    ({"chunk_overlap": -1}, "chunk_overlap"),
    ({"seed": -3}, "seed"),
    ({"precision": "int4"}, "precision"),
])
def test_bad_values_are_one_line_errors_naming_the_field(kwargs, field):
    with pytest.raises(OptionError) as err:
        ReconstructOptions(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{field}: expected") and "\n" not in message
    assert isinstance(err.value, UserInputError) and isinstance(err.value, ValueError)


def test_json_round_trip_and_unknown_keys():
    o = ReconstructOptions(process_res=756, process_res_method="lower_bound_crop", ref_view_strategy="first",
                           use_ray_pose=True, infer_gs=True, align_to_input_ext_scale=False, max_views_per_pass=32,
                           chunk_overlap=4, seed=None, precision="bf16")
    assert ReconstructOptions.from_json(o.to_json()) == o
    assert json.loads(o.to_json())["process_res"] == 756
    assert ReconstructOptions.from_dict({"process_res": 280.0}).process_res == 280  # JSON numbers
    with pytest.raises(OptionError, match="unknown option 'proces_res'"):
        ReconstructOptions.from_dict({"proces_res": 280})
    with pytest.raises(OptionError, match="not JSON"):
        ReconstructOptions.from_json("{process_res: 1}")
    assert o.replace(seed=3).seed == 3 and o.seed is None
    with pytest.raises(OptionError, match="seed"):
        o.replace(seed=-1)
    assert o.cache_key() != o.replace(precision="fp32").cache_key()


def test_scene_options_read_old_and_foreign_files():
    old = {"process_res": 504, "process_res_method": "upper_bound_resize", "ref_view_strategy": "saddle_balanced",
           "use_ray_pose": False, "infer_gs": False, "align_to_input_ext_scale": True, "max_views_per_pass": 64,
           "chunk_overlap": 16, "passes": 1, "seed": 0, "image_files": ["a.jpg", ""], "camera_source": "input"}
    s = SceneOptions.from_saved(old)
    assert s.camera_source == "input" and s.image_files == ("a.jpg", "") and s.max_views_per_pass == 64
    assert s["camera_source"] == "input" and s.get("image_files") == ["a.jpg", ""] and s.get("nope", 1) == 1
    new_fields = {"precision": None, "loop_closure": "auto", "fast_decode": False, "skip_unreadable": False,
                  "skipped_files": [], "joints": [], "alignment": "single pass", "frame_source": "",
                  "frame_source_kind": "", "frame_rate": 0.0, "frame_indices": []}
    assert s.to_saved() == {**old, **new_fields}
    odd = SceneOptions.from_saved({"process_res": "big", "x": [1, 2], "camera_source": "martian"})
    assert odd.process_res == 504 and odd.camera_source == "predicted"
    assert odd.extra == {"process_res": "big", "x": [1, 2], "camera_source": "martian"}
    assert "x" in odd and odd["x"] == [1, 2]
    assert SceneOptions.from_saved(None) == SceneOptions()
    assert s.reconstruct_options == ReconstructOptions(max_views_per_pass=64, chunk_overlap=16)


def test_a_scene_file_with_old_dict_options_still_loads(tmp_path):
    from da3_plugins.core import Reconstruction

    n, h, w = 2, 6, 8
    rec = Reconstruction(images=np.zeros((n, h, w, 3), np.uint8), depth=np.ones((n, h, w), np.float32),
                         extrinsics=np.tile(np.eye(4)[:3], (n, 1, 1)),
                         intrinsics=np.tile(np.array([[8.0, 0, 4], [0, 8, 3], [0, 0, 1]]), (n, 1, 1)),
                         options={"camera_source": "none", "passes": 2, "legacy": True})
    assert isinstance(rec.options, SceneOptions) and rec.camera_source == "none" and rec.options.passes == 2
    path = rec.save(tmp_path / "s.npz")
    # a file written before the options were typed: the same JSON object, written by hand
    with np.load(path) as z:
        arrays = dict(z)
    arrays["options_json"] = np.array(json.dumps({"camera_source": "input", "process_res": 280, "passes": 3}))
    np.savez(tmp_path / "old.npz", **arrays)
    back = Reconstruction.load(tmp_path / "old.npz")
    assert back.camera_source == "input" and back.options.process_res == 280 and back.options["passes"] == 3
    again = Reconstruction.load(path)
    assert again.options == rec.options and again.options.extra == {"legacy": True}


def test_cli_arguments_are_derived_from_the_options():
    from da3_plugins.cli import build_parser
    from da3_plugins.commands import options_from_args

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["reconstruct"]
    flags = {a.dest: a for a in sub._actions}
    for f in ReconstructOptions.option_fields():
        if f.metadata["flag"] is None:
            assert f.name not in flags
            continue
        action = flags[f.name]
        assert f.metadata["flag"] in action.option_strings
        assert action.default is None  # only what the user gives overrides the options' defaults
        if f.metadata["choices"]:
            assert tuple(action.choices) == f.metadata["choices"]
    args = parser.parse_args(["reconstruct", "x", "-o", "y"])
    assert options_from_args(args) == ReconstructOptions()
    args = parser.parse_args(["reconstruct", "x", "-o", "y", "--process-res", "280", "--ref-view", "first",
                              "--ray-pose", "--max-views", "8", "--chunk-overlap", "3", "--seed", "5",
                              "--dtype", "bf16", "--process-res-method", "upper_bound_crop", "--gaussians"])
    assert options_from_args(args) == ReconstructOptions(
        process_res=280, ref_view_strategy="first", use_ray_pose=True, max_views_per_pass=8, chunk_overlap=3, seed=5,
        precision="bf16", process_res_method="upper_bound_crop", infer_gs=True)
    assert set(option_defaults()) == {f.name for f in ReconstructOptions.option_fields()}
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16", "int8") and len(REF_VIEW_STRATEGIES) == 4 and len(RESIZE_METHODS) == 4


def test_worker_request_is_read_into_the_options():
    from da3_plugins.runner import RunRequest

    req = RunRequest.from_message({"id": 1, "cmd": "reconstruct", "inputs": ["a/"], "output": "o", "dtype": "fp16",
                                   "options": {"process_res": 280, "fps": 4, "use_ray_pose": True}})
    assert req.options == ReconstructOptions(process_res=280, use_ray_pose=True, precision="fp16")
    assert req.fps == 4 and req.exports == ("scene",) and req.model is None
    with pytest.raises(OptionError, match="unknown option 'resolution'"):
        RunRequest.from_message({"inputs": ["a"], "output": "o", "options": {"resolution": 3}})
    with pytest.raises(UserInputError, match="unknown field 'modle'"):
        RunRequest.from_message({"inputs": ["a"], "output": "o", "modle": "x"})
    with pytest.raises(UserInputError, match="needs --gaussians"):
        RunRequest(inputs=("a",), output="o", exports="gs-ply")


def test_export_registry_drives_the_cli_and_the_readme():
    from da3_plugins.cli import build_parser

    assert parse_export_list("scene, ply,scene") == ("scene", "ply")
    with pytest.raises(UserInputError, match="unknown format 'obj'"):
        parse_export_list("ply,obj")
    with pytest.raises(UserInputError, match="at least one"):
        parse_export_list(" , ")
    assert {n for n, f in EXPORTS.items() if f.needs_gaussians} == {"gs-ply", "gs-video"}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["reconstruct"]
    help_text = next(a for a in sub._actions if a.dest == "export").help
    assert all(name in help_text for name in EXPORTS)
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, "README's export table differs from core.export.registry.markdown_table()"


def test_reconstruct_takes_options_and_keywords():
    from da3_plugins.core import random_model

    model = random_model("da3-small")
    images = [np.full((28, 42, 3), 90 + 40 * i, np.uint8) for i in range(2)]
    rec = model.reconstruct(images, ReconstructOptions(process_res=42, seed=1), ref_view_strategy="first")
    opts = rec.options
    assert isinstance(opts, SceneOptions)
    assert (opts.process_res, opts.seed, opts.ref_view_strategy, opts.precision) == (42, 1, "first", "fp32")
    assert opts.camera_source == "predicted" and opts.passes == 1 and opts.max_views_per_pass >= 2
    with pytest.raises(OptionError, match="process_ress: not a reconstruction option"):
        model.reconstruct(images, process_ress=42)
    with pytest.raises(OptionError, match="infer_gs: da3-small has no Gaussian head"):
        model.reconstruct(images, process_res=42, infer_gs=True)
    # a per-run precision is recorded and leaves the model as it was loaded
    fp = model.reconstruct(images, process_res=42)
    bf = model.reconstruct(images, process_res=42, precision="bf16")
    assert bf.options.precision == "bf16" and str(model.dtype) == "torch.float32"
    assert np.abs(bf.depth - fp.depth).max() > 0  # it did run at another precision


@pytest.mark.host
def test_nerfstudio_dataparser_config_is_derived_from_the_options():
    pytest.importorskip("nerfstudio")
    from da3_plugins.nerfstudio.dataparser import OPTION_FIELDS, DA3DataParser, DA3DataParserConfig

    cfg_fields = {f.name: f for f in dataclasses.fields(DA3DataParserConfig)}
    defaults = option_defaults()
    assert set(OPTION_FIELDS) == set(defaults) - {"align_to_input_ext_scale"}
    for name in OPTION_FIELDS:
        assert cfg_fields[name].default == defaults[name], name
    cfg = DA3DataParserConfig(process_res=280, ref_view_strategy="first", precision="bf16")
    assert cfg.reconstruct_options() == ReconstructOptions(process_res=280, ref_view_strategy="first", precision="bf16")
    with pytest.raises(OptionError, match="ref_view_strategy"):
        DA3DataParserConfig(ref_view_strategy="last").reconstruct_options()
    # the cache key changes with every option (and only the options, the model and fps matter)
    files = [ROOT / "README.md"]
    base = DA3DataParser(DA3DataParserConfig())._key(files)
    assert DA3DataParser(DA3DataParserConfig())._key(files) == base
    for name, value in [("process_res", 280), ("process_res_method", "upper_bound_crop"), ("seed", 3),
                        ("use_ray_pose", True), ("max_views_per_pass", 9), ("chunk_overlap", 2), ("precision", "fp16"),
                        ("infer_gs", True), ("ref_view_strategy", "middle")]:
        assert DA3DataParser(DA3DataParserConfig(**{name: value}))._key(files) != base, name
