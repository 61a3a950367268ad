"""The precision policy ``auto`` (with faked device capabilities), its record in the scene file,
and the CPU int8 option (its difference to fp32 on trained and random weights, printed)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from da3_plugins.core import precision as P
from da3_plugins.core.errors import OptionError
from da3_plugins.core.options import PRECISIONS, ReconstructOptions

DEMO = Path(__file__).resolve().parents[1] / "da3_plugins" / "data" / "demo"

AMX_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
AVX512_BF16_CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9654
flags\t\t: fpu sse avx2 avx512f avx512_bf16
"""
ARM_BF16_CPUINFO = """processor\t: 0
Features\t: fp asimd sve bf16 i8mm
CPU part\t: 0xd40
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd crc32
"""


@pytest.fixture
def policy(monkeypatch, tmp_path):
    """A clean policy: no override, the probe's cache in tmp_path, and a probe that counts its runs."""
    monkeypatch.delenv(P.CPU_PRECISION_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    runs = []

    def fake_timing(fp32=1.0, bf16=0.25):
        def time_matmuls(*args, **kwargs):
            runs.append((fp32, bf16))
            return fp32, bf16
        monkeypatch.setattr(P, "time_matmuls", time_matmuls)

    fake_timing()
    return runs, fake_timing


def _cpu(monkeypatch, text, arch):
    monkeypatch.setattr(P, "cpu_features", lambda: P.parse_cpuinfo(text, arch))


# --------------------------------------------------------------------------- GPUs


@pytest.mark.parametrize("native_bf16, expected", [(True, "bf16"), (False, "fp16")])
def test_cuda_follows_the_official_policy(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(P, "cuda_bf16_supported", lambda device=None: native_bf16)
    assert P.auto_precision("cuda") == expected
    assert P.resolve_precision(None, "cuda:0") == expected == P.resolve_precision("auto", torch.device("cuda"))
    assert P.resolve_precision("fp32", "cuda") == "fp32"  # exact stays selectable


def test_mps_runs_half_precision_and_other_devices_fp32():
    assert P.auto_precision("mps") == "fp16"
    assert P.auto_precision("meta") == "fp32"


def test_int8_is_cpu_only_with_one_line():
    with pytest.raises(OptionError) as err:
        P.resolve_precision("int8", "cuda")
    assert str(err.value).startswith("precision: int8") and "CPU only" in str(err.value)
    assert "\n" not in str(err.value)
    assert P.resolve_precision("int8", "cpu") == "int8"


# --------------------------------------------------------------------------- CPUs


def test_cpu_features_are_read_from_cpuinfo():
    amx = P.parse_cpuinfo(AMX_CPUINFO, "x86_64")
    assert amx.amx and amx.native_bf16 and amx.model.startswith("Intel")
    zen = P.parse_cpuinfo(AVX512_BF16_CPUINFO, "x86_64")
    assert not zen.amx and zen.native_bf16 and zen.known
    arm = P.parse_cpuinfo(ARM_BF16_CPUINFO, "aarch64")
    assert arm.native_bf16 and not arm.amx
    assert not P.parse_cpuinfo(ARM_CPUINFO, "aarch64").native_bf16
    # masked model names ("AMD EPYC" for Zen 4 and Zen 5 alike): the probe's cache tells them apart
    zen4 = P.parse_cpuinfo("model name\t: AMD EPYC\ncpu family\t: 25\nflags\t: avx512_bf16\n", "x86_64")
    zen5 = P.parse_cpuinfo("model name\t: AMD EPYC\ncpu family\t: 26\nflags\t: avx512_bf16 avx_vnni\n", "x86_64")
    assert zen4.model == zen5.model and P._probe_key(zen4) != P._probe_key(zen5)


def test_cpu_with_amx_runs_bf16_without_a_probe(monkeypatch, policy):
    runs, _ = policy
    _cpu(monkeypatch, AMX_CPUINFO, "x86_64")
    assert P.decide_auto("cpu") == P.Decision("bf16", "CPU with AMX")
    assert runs == []


def test_cpu_with_avx512_bf16_but_no_amx_is_measured(monkeypatch, policy):
    """AVX-512 BF16 without AMX: bf16 ran at 0.65x the fp32 matmul on one machine of this pool
    and 5.6x on another, so the cached probe decides."""
    runs, fake_timing = policy
    _cpu(monkeypatch, AVX512_BF16_CPUINFO, "x86_64")
    fake_timing(fp32=1.0, bf16=1.5)  # slower: fp32
    assert P.auto_precision("cpu") == "fp32" and P.resolve_precision(None, "cpu") == "fp32"
    assert len(runs) == 1
    monkeypatch.setattr(P, "_probe_key", lambda feats: "a faster machine")
    fake_timing(fp32=1.0, bf16=0.2)  # much faster: bf16
    assert P.auto_precision("cpu") == "bf16" and len(runs) == 2


def test_cpu_without_bf16_is_fp32_without_a_probe(monkeypatch, policy):
    runs, _ = policy
    _cpu(monkeypatch, "flags\t\t: fpu sse avx2 avx512f\n", "x86_64")
    assert P.auto_precision("cpu") == "fp32" and runs == []


def test_this_machine(policy):
    """AMX: bf16 without a probe; native bf16 without AMX: the probe decides; no bf16: fp32."""
    features = P.cpu_features()
    decision = P.decide_auto("cpu")
    print(f"\nthis CPU: {features}; auto -> {decision.precision} ({decision.reason})")
    if features.amx:
        assert decision.precision == "bf16"
    elif features.native_bf16:
        assert "timed probe" in decision.reason
    elif features.arch == "x86_64":
        assert decision.precision == "fp32"


def test_other_cpus_with_native_bf16_use_the_cached_probe(monkeypatch, policy):
    runs, fake_timing = policy
    _cpu(monkeypatch, ARM_BF16_CPUINFO, "aarch64")
    first = P.decide_auto("cpu")
    assert first.precision == "bf16" and "timed probe" in first.reason and len(runs) == 1
    cache = P.probe_cache_path()
    assert cache.is_file() and json.loads(cache.read_text())["bf16_seconds"] == 0.25
    assert P.auto_precision("cpu") == "bf16" and len(runs) == 1  # cached: measured once per machine
    # another torch, CPU or thread count measures again
    monkeypatch.setattr(P, "_probe_key", lambda feats: "another machine")
    fake_timing(fp32=1.0, bf16=0.9)  # bf16 barely faster: not worth it
    assert P.auto_precision("cpu") == "fp32" and len(runs) == 2
    # a damaged cache file is measured again, not an error
    cache.write_text("{not json")
    assert P.auto_precision("cpu") == "fp32" and len(runs) == 3
    # without native bf16: fp32 and no probe
    _cpu(monkeypatch, ARM_CPUINFO, "aarch64")
    assert P.auto_precision("cpu") == "fp32" and len(runs) == 3


def test_the_probe_still_answers_when_the_cache_cannot_be_written(monkeypatch, policy, tmp_path):
    runs, _ = policy
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where the folder should be
    _cpu(monkeypatch, ARM_BF16_CPUINFO, "aarch64")
    assert P.auto_precision("cpu") == "bf16" and len(runs) == 1


def test_the_environment_overrides_the_cpu_policy(monkeypatch, policy):
    runs, _ = policy
    _cpu(monkeypatch, AVX512_BF16_CPUINFO, "x86_64")
    monkeypatch.setenv(P.CPU_PRECISION_ENV, "bf16")
    assert P.decide_auto("cpu") == P.Decision("bf16", f"{P.CPU_PRECISION_ENV}=bf16")
    monkeypatch.setenv(P.CPU_PRECISION_ENV, "probe")  # measure even where the features decide
    assert P.auto_precision("cpu") == "bf16" and len(runs) == 1
    _cpu(monkeypatch, AMX_CPUINFO, "x86_64")
    monkeypatch.setenv(P.CPU_PRECISION_ENV, "FP32")
    assert P.auto_precision("cpu") == "fp32"
    monkeypatch.setenv(P.CPU_PRECISION_ENV, "fast")
    with pytest.raises(OptionError, match=f"{P.CPU_PRECISION_ENV}: expected fp32, bf16 or probe"):
        P.auto_precision("cpu")


def test_the_real_probe_measures_both(monkeypatch):
    fp32, bf16 = P.time_matmuls(size=128, repeats=1)
    assert fp32 > 0 and bf16 > 0


# --------------------------------------------------------------------------- names and the scene


def test_names_aliases_and_dtypes():
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16", "int8")
    assert [P.resolve_precision(x) for x in ("float32", "BF16", torch.float16, torch.qint8)] == \
        ["fp32", "bf16", "fp16", "int8"]
    assert P.precision_name(None) == "fp32" and P.precision_name(torch.qint8) == "int8"
    with pytest.raises(OptionError, match="precision: expected one of auto, fp32"):
        P.resolve_precision("int4")
    with pytest.raises(OptionError, match="precision"):
        ReconstructOptions(precision="int4")
    assert ReconstructOptions(precision="int8").precision == "int8"


def test_load_model_defaults_to_auto_and_the_scene_records_the_resolved_name(monkeypatch, policy):
    from da3_plugins.core import load_model

    model = load_model("embedded", device="cpu")
    assert model.precision == P.auto_precision("cpu")
    assert load_model("embedded", device="cpu", dtype="fp32").precision == "fp32"
    images = [np.full((28, 42, 3), 90 + 40 * i, np.uint8) for i in range(2)]
    # auto on a machine where the CPU policy says bf16
    monkeypatch.setattr(P, "decide_cpu", lambda features=None: P.Decision("bf16", "faked"))
    bf = load_model("embedded", device="cpu")
    assert bf.precision == "bf16" and bf.dtype == torch.bfloat16
    rec = bf.reconstruct(images, process_res=42)
    assert rec.options.precision == "bf16"
    assert rec.options.to_saved()["precision"] == "bf16"
    # per run: auto resolves for the device, fp32 is exact, and the model keeps its precision
    exact = load_model("embedded", device="cpu", dtype="fp32")
    assert exact.reconstruct(images, process_res=42, precision="auto").options.precision == "bf16"
    assert exact.reconstruct(images, process_res=42).options.precision == "fp32"
    assert bf.reconstruct(images, process_res=42, precision="fp32").options.precision == "fp32"
    assert bf.precision == "bf16" and exact.precision == "fp32"


def test_front_ends_load_with_auto(monkeypatch, policy):
    from da3_plugins.runner import load_model_for

    monkeypatch.setattr(P, "decide_cpu", lambda features=None: P.Decision("bf16", "faked"))
    assert load_model_for("embedded", device="cpu").precision == "bf16"
    assert load_model_for("embedded", device="cpu", precision="fp32").precision == "fp32"
    assert load_model_for("embedded", device="cpu", precision="int8").precision == "int8"


def test_a_precision_the_device_cannot_run_is_its_own_line(monkeypatch):
    """int8 on a GPU (faked: no GPU here) names the precision, not the model."""
    import da3_plugins.core.model.da3model as da3model
    from da3_plugins.runner import load_model_for

    monkeypatch.setattr(da3model, "set_precision", lambda net, precision: P.resolve_precision(precision, "cuda"))
    with pytest.raises(P.PrecisionError) as err:
        load_model_for("embedded", device="cpu", precision="int8")
    assert str(err.value).startswith("precision: int8") and "--model" not in str(err.value)


# --------------------------------------------------------------------------- int8


def test_int8_quantises_the_backbone_linear_layers_only():
    from torch import nn

    from da3_plugins.core import random_model

    model = random_model("da3-tiny", seed=0, device="cpu")
    keys = list(model.net.state_dict())
    P.set_precision(model, "int8")
    assert model.precision == "int8" and model.dtype == torch.qint8
    x = torch.rand(1, 2, 3, 28, 42)
    out8 = model.net(x)
    q = model.net._backbone_module("cpu")
    linears = [m for m in model.net.backbone.modules() if isinstance(m, nn.Linear)]
    quantised = [m for m in q.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert len(quantised) == len(linears) > 0
    assert not any(isinstance(m, nn.Linear) for m in q.modules())
    assert list(model.net.state_dict()) == keys  # the fp32 weights are untouched and still saved
    assert model.net._backbone_module("cpu") is q  # made once
    model.net.backbone.pretrained.blocks[0].mlp.fc1.weight.mul_(1.5)  # new weights: quantised again
    assert model.net._backbone_module("cpu") is not q
    P.set_precision(model, "fp32")
    out32 = model.net(x)
    assert torch.isfinite(out8.depth).all() and not torch.equal(out8.depth, out32.depth)
    with pytest.raises(ValueError, match="CPU only"):
        P.int8_backbone(model.net, "cuda")


def _differences(test, ref):
    """Median and 95th-percentile relative depth difference, and the median and largest pairwise
    relative rotation difference between the views' cameras (degrees; frame-independent)."""
    from da3_plugins.core.geometry import relative_pose_errors

    rel = np.abs(test.depth - ref.depth) / np.abs(ref.depth)
    r_err, t_err = relative_pose_errors(test.extrinsics, ref.extrinsics)
    return {"depth_median": float(np.median(rel)), "depth_p95": float(np.percentile(rel, 95)),
            "rotation_median": float(np.median(r_err)), "rotation_max": float(r_err.max()),
            "translation_median": float(np.median(t_err))}


def _line(name, d):
    return (f"{name}: relative depth difference median {d['depth_median']:.1e}, p95 {d['depth_p95']:.1e}; "
            f"camera rotation difference median {d['rotation_median']:.2f}, max {d['rotation_max']:.2f} deg; "
            f"translation direction median {d['translation_median']:.1f} deg")


def _compare(model, images, process_res):
    """Runs at fp32, bf16 and int8 (reference view as by default, and the first view); the
    differences to fp32, and int8/fp32 time measured side by side (interleaved runs)."""
    P.int8_backbone(model.net)  # quantise before timing
    runs, times = {}, {"fp32": [], "int8": []}
    for ref in ("saddle_balanced", "first"):
        for name in ("fp32", "int8", "bf16") if ref == "saddle_balanced" else ("fp32", "int8"):
            t0 = time.perf_counter()
            runs[name, ref] = model.reconstruct(images, process_res=process_res, precision=name, ref_view_strategy=ref)
            times.setdefault(name, []).append(time.perf_counter() - t0)
    diffs = {(name, ref): _differences(runs[name, ref], runs["fp32", ref]) for name, ref in runs if name != "fp32"}
    return diffs, min(times["int8"]) / min(times["fp32"]), runs


def _report(title, diffs, ratio):
    print(f"\n{title}: int8/fp32 time {ratio:.2f} (side by side)")
    for (name, ref), d in diffs.items():
        print(f"  {_line(name, d)} [{ref}]")


def test_int8_on_trained_weights_the_embedded_model_on_the_demo():
    """The embedded model's cameras are almost a pure rotation (translations about 1% of the
    true ones), so the translation directions are noise for every precision; rotation and depth
    are what to read."""
    from da3_plugins.core import load_model
    from da3_plugins.core.geometry import relative_pose_errors

    model = load_model("embedded", device="cpu", dtype="fp32")
    images = sorted(str(p) for p in DEMO.glob("view_*.png"))
    diffs, ratio, runs = _compare(model, images, process_res=504)
    _report(f"embedded da3-tiny, {len(images)} demo views at 504", diffs, ratio)
    truth = np.array([f["w2c"] for f in json.loads((DEMO / "cameras.json").read_text())["frames"]])
    for name in ("fp32", "bf16", "int8"):
        r_err, _ = relative_pose_errors(runs[name, "saddle_balanced"].extrinsics, truth)
        print(f"  {name} against the true cameras: rotation error median {np.median(r_err):.1f} deg")
    assert runs["int8", "first"].options.precision == "int8" and model.precision == "fp32"
    d = diffs["int8", "first"]
    assert d["depth_median"] < 1e-2 and d["rotation_median"] < 2.0


def test_int8_on_random_weights():
    from da3_plugins.core import random_model

    model = random_model("da3-small", seed=0, device="cpu")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (140, 196, 3), dtype=np.uint8) for _ in range(3)]
    diffs, ratio, _ = _compare(model, images, process_res=196)
    _report("random da3-small, 3 views at 196", diffs, ratio)
    assert diffs["int8", "first"]["depth_median"] < 1e-2
