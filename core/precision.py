"""Compute precision of the backbone: the ``auto`` policy, option names <-> torch dtypes, int8.

One table for ``load_model(dtype=...)``, ``ReconstructOptions.precision`` and the scene file's
record of the precision a run used (always a resolved name, never ``auto``).  The heads, the
camera decoder, the ray solver and the Gaussian adapter always run in float32.

Names: ``fp32`` (exact), ``bf16`` / ``fp16`` (the backbone under autocast; weights stay fp32),
``int8`` (CPU only: the backbone's Linear layers dynamically quantised to int8, activations
fp32) and ``auto``, which :func:`auto_precision` resolves for the model's device:

* **cuda**: the official policy: ``bf16`` where the GPU computes bfloat16 natively
  (``torch.cuda.is_bf16_supported(including_emulation=False)``, compute capability 8.0+),
  ``fp16`` otherwise.  (The official API also counts emulated bf16; emulation is slow.)
* **mps**: ``fp16`` (Apple GPUs have native half precision; the official non-bf16 choice).
  Untested here: no Mac.
* **cpu**: ``bf16`` only where it is known (AMX) or measured to be faster than fp32, decided
  from the CPU's features, with a timed probe where they cannot tell:

  - ``DA3P_CPU_PRECISION`` = ``fp32`` / ``bf16`` forces the answer, ``probe`` forces the timed
    probe below;
  - AMX (``amx_bf16`` and ``amx_tile`` in /proc/cpuinfo, or torch's own AMX check): ``bf16``
    (tile matmuls run bf16 several times faster than fp32);
  - any other x86 CPU: ``fp32``, exact.  Without AVX-512 BF16, bf16 is emulated and slow.  With
    it but without AMX the answer depends on the chip, and its flags cannot tell: a 2048^3
    matmul ran at 98 GFLOP/s in bf16 against 150 in fp32 on one machine of this project's pool,
    while on another (AMD family 26, Zen 5) it ran at 759 against 136 (two threads) and the
    base network took 0.55-0.72x its fp32 time.  So these stay exact unless ``DA3P_CPU_PRECISION=probe`` (measure, once)
    or ``bf16`` says otherwise;
  - other CPUs with native bf16 (aarch64 ``bf16``; arm64 with no /proc/cpuinfo): a one-off
    timed probe (fp32 against bf16 matmuls), cached per machine (CPU identity, flags, torch
    version, threads) in ``~/.cache/da3-plugins/cpu-precision.json`` (``$XDG_CACHE_HOME`` is
    honoured); ``bf16`` when it is at least :data:`PROBE_MIN_SPEEDUP` times faster;
  - anything else: ``fp32``.
* any other device: ``fp32``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch

from .errors import OptionError
from .options import PRECISIONS

CPU_PRECISION_ENV = "DA3P_CPU_PRECISION"
"""Environment variable overriding ``auto`` on the CPU: ``fp32``, ``bf16`` or ``probe``."""
PROBE_MIN_SPEEDUP = 1.3
"""The timed probe picks bf16 only when its matmul is at least this many times faster than fp32
(the whole network gains less than a bare matmul: the casts and fp32 heads stay)."""
PROBE_SIZE = 1536

class PrecisionError(OptionError):
    """A precision name that is unknown or that the device cannot run (int8 on a GPU)."""


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.qint8}
_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16", "qint8": "int8"}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


# ------------------------------------------------------------------------------- names


def resolve_precision(precision: Union[str, torch.dtype, None], device: Union[str, torch.device, None] = "cpu") -> str:
    """A precision (a name, an alias such as "bfloat16", a torch dtype, None or "auto") -> the
    concrete name used on ``device`` ("fp32", "bf16", "fp16" or "int8").

    None and "auto" follow :func:`auto_precision`.  An unknown name, or int8 anywhere but the
    CPU, is a :class:`PrecisionError` (an :class:`OptionError`, one line)."""
    if isinstance(precision, torch.dtype):
        if precision not in _NAMES:
            raise PrecisionError(f"precision: expected float32, bfloat16, float16 or qint8, got {precision}")
        name = _NAMES[precision]
    else:
        text = "auto" if precision is None else str(precision).lower()
        name = _ALIASES.get(text, text)
        if name not in PRECISIONS:
            raise PrecisionError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if name == "auto":
        return auto_precision(dev)
    if name == "int8" and dev.type != "cpu":
        raise PrecisionError(f"precision: int8 (dynamic int8 quantisation) runs on the CPU only, not on {dev.type}; "
                          "use auto, bf16 or fp16 there")
    return name


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: Union[str, torch.device, None] = "cpu") -> torch.dtype:
    """The torch dtype of :func:`resolve_precision` (torch.qint8 stands for int8)."""
    return _DTYPES[resolve_precision(dtype, device)]


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """torch dtype -> the option name ("fp32", "bf16", "fp16", "int8"); None is fp32."""
    return "fp32" if dtype is None else _NAMES[dtype]


def model_precision(model) -> Optional[str]:
    """The resolved precision a DA3 model (or network) runs at now; None for other predictors."""
    net = getattr(model, "net", model)
    if not hasattr(net, "backbone_dtype"):
        return None
    return precision_name(net.backbone_dtype)


def set_precision(model, precision: Union[str, torch.dtype, None]) -> str:
    """Set the precision ``model``'s backbone runs at (resolved for its device); returns the name."""
    net = getattr(model, "net", model)
    device = next(net.parameters()).device
    name = resolve_precision(precision, device)
    net.backbone_dtype = _DTYPES[name]
    return name


@contextlib.contextmanager
def backbone_precision(model, precision: Union[str, torch.dtype, None]):
    """Run ``model``'s backbone at ``precision`` inside the block (an autocast dtype or the int8
    copy: the weights are untouched), then restore what it was loaded with."""
    net = model.net
    before = net.backbone_dtype
    set_precision(net, precision)
    try:
        yield model
    finally:
        net.backbone_dtype = before


# ------------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class CpuFeatures:
    """What the policy needs to know about the CPU."""

    arch: str
    model: str = ""
    amx: bool = False
    native_bf16: bool = False
    known: bool = True  #: False when the features could not be read (no /proc/cpuinfo)
    signature: str = ""  #: family / model / stepping and a hash of the flags (names are often masked)


@dataclass(frozen=True)
class Decision:
    """An ``auto`` answer and why (for logs and the benchmark)."""

    precision: str
    reason: str


def auto_precision(device: Union[str, torch.device, None] = "cpu") -> str:
    """The precision ``auto`` stands for on ``device`` (see the module's docstring)."""
    return decide_auto(device).precision


def decide_auto(device: Union[str, torch.device, None] = "cpu") -> Decision:
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if cuda_bf16_supported(dev):
            return Decision("bf16", "CUDA GPU with native bfloat16")
        return Decision("fp16", "CUDA GPU without native bfloat16")
    if dev.type == "mps":
        return Decision("fp16", "Apple GPU (MPS): half precision")
    if dev.type != "cpu":
        return Decision("fp32", f"{dev.type}: no policy, exact")
    return decide_cpu()


def decide_cpu(features: Optional[CpuFeatures] = None) -> Decision:
    """``auto`` on the CPU: the environment override, then the features, then the cached probe."""
    forced = os.environ.get(CPU_PRECISION_ENV, "").strip().lower()
    if forced in ("fp32", "bf16"):
        return Decision(forced, f"{CPU_PRECISION_ENV}={forced}")
    if forced and forced != "probe":
        raise PrecisionError(f"{CPU_PRECISION_ENV}: expected fp32, bf16 or probe, got {forced!r}")
    feats = features or cpu_features()
    if forced == "probe":
        return _probe_decision(feats)
    if feats.amx:
        return Decision("bf16", "CPU with AMX")
    # native bf16 without AMX (AVX-512 BF16, Arm bf16): its speed varies by chip (measured
    # here on two machines of one pool: 0.65x and 5.6x the fp32 matmul), so it is measured
    if feats.native_bf16 or (not feats.known and feats.arch in ("arm64", "aarch64")):
        return _probe_decision(feats)
    return Decision("fp32", "CPU without native bfloat16")


def cuda_bf16_supported(device: Optional[torch.device] = None) -> bool:
    """Native bfloat16 on this CUDA GPU (not emulated)."""
    try:
        if device is not None and device.index is not None:
            return torch.cuda.get_device_capability(device)[0] >= 8
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without including_emulation
        return torch.cuda.is_bf16_supported()


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures`, from /proc/cpuinfo (and torch where that is missing)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """:class:`CpuFeatures` from the text of /proc/cpuinfo ("" when there is none) and the
    architecture (``platform.machine()``).  AMX: the ``amx_bf16`` and ``amx_tile`` flags (the
    kernel lists them only when it lets programs use the tiles); with no cpuinfo, torch's own
    check.  Native bf16: x86 ``avx512_bf16`` or AMX, aarch64 ``bf16``."""
    flags, model, ident = set(), "", {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("cpu family", "model", "stepping", "cpu implementer", "cpu part", "cpu variant") \
                and key not in ident:
            ident[key] = value.strip()
    known = bool(flags)
    amx = {"amx_bf16", "amx_tile"} <= flags
    check = getattr(getattr(torch, "cpu", None), "_is_amx_tile_supported", None)  # private: may go
    if not known and check is not None:  # no /proc/cpuinfo (Windows, macOS): ask torch
        try:
            amx = bool(check())
        except Exception:  # noqa: BLE001 - a private helper; its absence only means "no AMX"
            amx = False
    signature = "/".join(f"{k} {v}" for k, v in sorted(ident.items()))
    signature += f"/flags {hashlib.sha1(' '.join(sorted(flags)).encode()).hexdigest()[:10]}"
    return CpuFeatures(arch=arch.lower(), model=model or platform.processor(), amx=amx,
                       native_bf16=amx or "avx512_bf16" in flags or "bf16" in flags, known=known,
                       signature=signature)


# ------------------------------------------------------------------------------- the probe


def probe_cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "da3-plugins" / "cpu-precision.json"


def _probe_key(feats: CpuFeatures) -> str:
    return f"{feats.arch}|{feats.model}|{feats.signature}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _probe_decision(feats: CpuFeatures) -> Decision:
    result = cached_probe(feats)
    speedup = result["fp32_seconds"] / max(result["bf16_seconds"], 1e-12)
    name = "bf16" if speedup >= PROBE_MIN_SPEEDUP else "fp32"
    return Decision(name, f"timed probe: bf16 matmul {speedup:.2f}x the fp32 speed (cached in {probe_cache_path()})")


def cached_probe(feats: Optional[CpuFeatures] = None) -> dict:
    """The timed probe's result for this machine, measured once and kept in :func:`probe_cache_path`."""
    feats = feats or cpu_features()
    key = _probe_key(feats)
    path = probe_cache_path()
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key:
            return saved
    except (OSError, ValueError, AttributeError):
        pass
    fp32, bf16 = time_matmuls()
    result = {"key": key, "fp32_seconds": fp32, "bf16_seconds": bf16}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:  # a read-only home: the answer is still used, just not kept
        pass
    return result


def time_matmuls(size: int = PROBE_SIZE, repeats: int = 3):
    """Median seconds of a size^3 matmul in fp32 and in bf16, interleaved (so that other load on
    the machine slows both alike).  About a second on a 2-core CPU."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    ah, bh = a.bfloat16(), b.bfloat16()
    times = {"fp32": [], "bf16": []}
    with torch.no_grad():
        torch.mm(a, b), torch.mm(ah, bh)  # warm-up
        for _ in range(repeats):
            for name, (x, y) in (("fp32", (a, b)), ("bf16", (ah, bh))):
                t0 = time.perf_counter()
                torch.mm(x, y)
                times[name].append(time.perf_counter() - t0)
    return sorted(times["fp32"])[repeats // 2], sorted(times["bf16"])[repeats // 2]


# ------------------------------------------------------------------------------- int8


def int8_backbone(net, device_type: str = "cpu"):
    """The dynamic-int8 copy of ``net.backbone`` (its Linear layers quantised, torch's
    ``quantize_dynamic``), made on first use and again whenever the weights change."""
    if device_type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU only, not on {device_type}")
    params = tuple((p.data_ptr(), p._version) for p in net.backbone.parameters())
    cached = net.__dict__.get("_int8_backbone")
    if cached is None or cached[0] != params:
        cached = (params, quantize_linear_layers(net.backbone))
        net.__dict__["_int8_backbone"] = cached  # not a submodule: state_dict() and .to() ignore it
    return cached[1]


def quantize_linear_layers(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose ``nn.Linear`` layers are dynamically quantised (int8 weights,
    per-tensor; activations quantised per call).  torch.ao's eager quantisation is deprecated
    in favour of torchao, but torchao's int8 path is slower on CPU without torch.compile."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:  # a future torch without torch.ao.quantization
        raise PrecisionError(f"precision: int8 needs torch.ao.quantization, which this torch lacks ({exc})") from None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated", category=UserWarning)
        return quantize_dynamic(copy.deepcopy(module).cpu().float(), {torch.nn.Linear}, dtype=torch.qint8)


__all__ = ["CPU_PRECISION_ENV", "CpuFeatures", "Decision", "PrecisionError", "auto_precision", "backbone_precision",
           "cached_probe", "cpu_features", "decide_auto", "decide_cpu", "int8_backbone", "model_precision",
           "parse_cpuinfo", "precision_name", "probe_cache_path", "resolve_dtype", "resolve_precision", "set_precision"]
