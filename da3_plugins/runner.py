"""One run path for every front end: ``da3p``, the worker (and so the Blender add-on).

Here live:

* :class:`UserInputError` (from the core): the one error type the front ends turn into a
  one-line message (``da3p``: exit code 2; the worker: an ``error`` event with code 2);
* the progress sinks (:func:`make_progress`): tqdm bars for people, JSON lines for programs,
  nothing; each receives the core's :class:`~da3_plugins.core.pipeline.ProgressEvent`;
* :class:`OutputDir`: an output folder built under a temporary name and renamed on success, so
  a failed or interrupted run leaves nothing behind;
* :class:`RunRequest` and :func:`run_reconstruct`: photos (and optional camera files) to an
  output folder of exports, with the model supplied by the caller (the CLI loads one, the
  worker keeps its models loaded).

Nothing here parses command lines or speaks the worker protocol.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, TextIO, Tuple

from da3_plugins.core.errors import HubError, OptionError, UserInputError, first_line
from da3_plugins.core.export.registry import DEFAULT_EXPORTS, EXPORTS, parse_export_list, write_exports
from da3_plugins.core.options import ReconstructOptions

from da3_plugins.core.model_source import DEFAULT_MODEL  # what loads when no model is named

__all__ = [
    "DEFAULT_MODEL", "ModelCache", "ModelLoader", "OutputDir", "Progress", "RunRequest", "RunResult",
    "UserInputError", "load_model_for",
    "make_progress", "run_reconstruct", "write_exports",
]


# --------------------------------------------------------------------------- progress


class Progress:
    """A progress sink.  ``update(stage, done, total, message)`` per step, ``info(text)`` for a
    line of news, ``event(name, **fields)`` for structured events (only JSON sinks show them).
    Calling it with a core ``ProgressEvent`` is ``update``.  This base class shows nothing."""

    mode = "none"

    def __call__(self, ev) -> None:
        self.update(ev.stage, ev.done, ev.total, ev.message)

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        pass

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        """Something the user must know even with ``--progress none``: one line on stderr."""
        print(f"da3p: warning: {text}", file=sys.stderr)

    def event(self, name: str, **fields) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress(Progress):
    """tqdm bars on stderr, one per stage; info lines on stderr."""

    mode = "bar"

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream
        self._bars: Dict[str, Any] = {}

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        from tqdm import tqdm

        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="", leave=True,
                                          file=self.stream or sys.stderr, dynamic_ncols=True)
        bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
            self._bars.pop(stage, None)

    def info(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream or sys.stderr)  # above the bars, not through them

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class JsonProgress(Progress):
    """One JSON object per line on ``stream`` (stdout by default), each with ``event`` and any
    ``fixed`` fields (the worker adds the request id)."""

    mode = "json"

    def __init__(self, stream: Optional[TextIO] = None, **fixed) -> None:
        self.stream = stream
        self.fixed = fixed

    def event(self, name: str, **fields) -> None:
        stream = self.stream or sys.stdout
        stream.write(json.dumps({**self.fixed, "event": name, **fields}) + "\n")
        stream.flush()

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        self.event("progress", stage=stage, done=done, total=total, message=message)

    def info(self, text: str) -> None:
        self.event("info", message=text)

    def warn(self, text: str) -> None:
        self.event("warning", message=text)


PROGRESS_MODES = ("bar", "json", "none")


def make_progress(mode: str) -> Progress:
    """"bar" (people), "json" (programs) or "none"."""
    if mode == "bar":
        return BarProgress()
    if mode == "json":
        return JsonProgress()
    if mode == "none":
        return Progress()
    raise OptionError(f"--progress: expected one of {', '.join(PROGRESS_MODES)}, got {mode!r}")


# --------------------------------------------------------------------------- output folder


class OutputDir:
    """An output folder built under a temporary name beside it and renamed on success.

    Use it as a context manager: the folder appears at ``target`` when the block succeeds,
    and nothing is left behind when it fails (or when :meth:`discard` is called)."""

    def __init__(self, target, overwrite: bool, *, flag: str = "-o") -> None:
        self.target = Path(target).expanduser()
        if self.target.exists():
            if not self.target.is_dir():
                raise UserInputError(f"{flag} {target}: exists and is not a folder")
            if any(self.target.iterdir()) and not overwrite:
                raise UserInputError(f"{flag} {target}: the folder exists and is not empty "
                                     "(add --overwrite to replace it)")
        parent = self.target.parent if str(self.target.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserInputError(f"{flag} {target}: cannot create the folder {parent} ({exc.strerror})") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserInputError(f"{flag} {target}: the folder {parent} is not writable")
        from da3_plugins.core.reconstruction import atomic_folder

        self._folder = atomic_folder(self.target, overwrite=True)
        try:
            self.tmp = self._folder.__enter__()
        except OSError as exc:
            raise UserInputError(f"{flag} {target}: cannot write in {parent} ({exc.strerror})") from None
        self._open = True

    def commit(self) -> Path:
        if self._open:
            self._open = False
            self._folder.__exit__(None, None, None)
        return self.target

    def discard(self) -> None:
        if self._open:
            self._open = False
            self._folder.__exit__(RuntimeError, RuntimeError("discarded"), None)

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


# --------------------------------------------------------------------------- models


def load_model_for(source: Optional[str], *, device: str = "auto", precision: Optional[str] = None,
                   progress: Optional[Progress] = None, flag: str = "--model"):
    """Load the model a front end was asked for (``None``: :data:`DEFAULT_MODEL`).

    Every failure the user can fix (a missing folder, a bad checkpoint, an unreachable hub id)
    becomes one :class:`UserInputError` line naming ``flag`` and the model; for a hub id that
    cannot be fetched it names the flag's offline choices too.  ``precision`` None is ``auto``
    (the policy in ``core/precision.py``); a precision the device cannot run (int8 on a GPU) is
    one line naming the precision."""
    from da3_plugins.core import load_model
    from da3_plugins.core.precision import PrecisionError

    name = source or DEFAULT_MODEL
    sink = progress or Progress()
    sink.update("model", 0, 1, name)
    try:
        model = load_model(name, device=device, dtype=precision or "auto")
    except PrecisionError:  # the precision, not the model: its own line ("precision: ...")
        raise
    except (UserInputError, FileNotFoundError, ImportError) as exc:
        hint = ""
        if isinstance(exc, HubError):  # its line says how to get the model; name this front end's flag
            tried = f"no {flag} given, so the official default was tried; " if source is None else ""
            hint = f" ({tried}then {flag} DA3_DIR, or {flag} embedded)"
        text = first_line(exc)
        text = text if name in text else f"{name}: {text}"
        raise UserInputError(f"{flag} {text}{hint}") from None
    sink.update("model", 1, 1, f"{model.preset} on {model.device}, {model.precision}")
    return model


ModelGetter = Callable[[Optional[str], Optional[str]], Any]
"""``get_model(source, precision) -> DA3Model``: the CLI loads, the worker keeps models loaded."""


class ModelLoader:
    """A picklable :data:`ModelGetter` loading as ``da3p`` does, on ``device`` (what a batch
    and each Ray worker call)."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device

    def __call__(self, source: Optional[str], precision: Optional[str]):
        return load_model_for(source, device=self.device, precision=precision)


class ModelCache:
    """A :data:`ModelGetter` that loads each (source, precision) once with ``load`` and keeps it."""

    def __init__(self, load: ModelGetter) -> None:
        self.load = load
        self.loaded: Dict[tuple, Any] = {}

    def __call__(self, source: Optional[str], precision: Optional[str]):
        key = (source, precision)
        if key not in self.loaded:
            self.loaded[key] = self.load(source, precision)
        return self.loaded[key]


# --------------------------------------------------------------------------- reconstruct


@dataclass(frozen=True)
class RunRequest:
    """One reconstruction job, as every front end states it.

    Attributes:
        inputs: image files, folders of images or videos.
        output: the output folder (built atomically).
        model: model folder, file, hub id or "embedded"; None: :data:`DEFAULT_MODEL`.
        exports: names from the export registry.
        options: the :class:`ReconstructOptions`.
        poses, intrinsics: optional files of known cameras (see :func:`read_camera_files`), or
            the arrays themselves.
        fps: frames per second sampled from videos.
        conf_threshold: points kept by the point exports: "auto", a number, or None (all).
        overwrite: replace an existing non-empty output folder.
    """

    inputs: Tuple[str, ...]
    output: str
    model: Optional[str] = None
    exports: Tuple[str, ...] = DEFAULT_EXPORTS
    options: ReconstructOptions = field(default_factory=ReconstructOptions)
    poses: Any = None
    intrinsics: Any = None
    fps: float = 2.0
    conf_threshold: Any = "auto"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.inputs, (str, os.PathLike)):
            object.__setattr__(self, "inputs", (self.inputs,))
        object.__setattr__(self, "inputs", tuple(str(i) for i in self.inputs))
        if not self.inputs:
            raise UserInputError("inputs: give at least one image, folder or video")
        if not self.output:
            raise UserInputError("output: an output folder is required")
        if isinstance(self.exports, str):
            object.__setattr__(self, "exports", parse_export_list(self.exports))
        else:
            object.__setattr__(self, "exports", parse_export_list(",".join(self.exports)))
        for name in self.exports:
            if EXPORTS[name].needs_gaussians and not self.options.infer_gs:
                raise UserInputError(f"--export {name} needs --gaussians")
        if self.poses is not None and self.intrinsics is None:
            raise UserInputError("--poses: known poses need --intrinsics too")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not self.fps > 0:
            raise UserInputError(f"--fps: expected a positive number, got {self.fps!r}")
        ct = self.conf_threshold
        if not (ct is None or ct == "auto" or (isinstance(ct, (int, float)) and not isinstance(ct, bool))):
            raise UserInputError(f"--conf-threshold: expected a number or 'auto', got {ct!r}")

    @classmethod
    def from_message(cls, req: Mapping[str, Any]) -> "RunRequest":
        """From the worker's JSON request (``inputs``, ``output``, ``model``, ``export``,
        ``options``, ``poses``, ``intrinsics``, ``conf_threshold``, ``overwrite``; ``fps`` and
        the older top-level ``dtype`` are also read from where earlier clients put them)."""
        options = dict(req.get("options") or {})
        fps = options.pop("fps", req.get("fps", 2.0))
        if req.get("dtype") is not None:
            options.setdefault("precision", req["dtype"])
        unknown = sorted(set(req) - {"id", "cmd", "inputs", "output", "model", "export", "options", "poses",
                                     "intrinsics", "conf_threshold", "overwrite", "fps", "dtype"})
        if unknown:
            raise UserInputError(f"request: unknown field {unknown[0]!r}")
        if not req.get("inputs") or not req.get("output"):
            raise UserInputError("request: 'inputs' and 'output' are required")
        return cls(inputs=tuple(req["inputs"]), output=str(req["output"]), model=req.get("model") or None,
                   exports=req.get("export", "scene"), options=ReconstructOptions.from_dict(options),
                   poses=req.get("poses"), intrinsics=req.get("intrinsics"), fps=fps,
                   conf_threshold=req.get("conf_threshold", "auto"), overwrite=bool(req.get("overwrite", True)))


@dataclass(frozen=True)
class RunResult:
    """What a run wrote: the output folder, {export name: path relative to it}, and facts."""

    folder: Path
    files: Dict[str, str]
    views: int
    size: Tuple[int, int]
    seconds: float

    @property
    def summary(self) -> str:
        return f"{self.views} views at {self.size[0]}x{self.size[1]} in {self.seconds:.1f} s"

    def absolute_files(self) -> Dict[str, str]:
        return {k: str(self.folder / v) for k, v in self.files.items()}


def run_reconstruct(request: RunRequest, get_model: ModelGetter, progress: Optional[Progress] = None, *,
                    pool=None, postprocess: Optional[Callable] = None) -> RunResult:
    """Photos to an output folder of exports: read, reconstruct, write, rename.

    ``get_model(source, precision)`` returns the model.  ``pool``: workers that run the
    network passes (``--ray``, :class:`~da3_plugins.ray_backend.RayChunkPool`).
    ``postprocess(rec) -> rec`` runs before the exports (``da3p batch`` aligns depth to
    measured depth there).  Bad input raises :class:`UserInputError` (one line); the output
    folder never exists half-written."""
    from da3_plugins.core.images import scan_images

    sink = progress or Progress()
    out = OutputDir(request.output, request.overwrite)
    cache = work_folder(out.target)
    try:
        # headers only: a bad file among hundreds stops here, before any network time
        scan = scan_images(list(request.inputs), fps=request.fps, skip_unreadable=request.options.skip_unreadable)
        for path, why in scan.skipped:
            sink.warn(f"skipped {path}: {why}")
        ext, k = read_camera_files(request.poses, request.intrinsics, len(scan.refs))
        model = get_model(request.model, request.options.precision)
        exports = list(request.exports)
        scene_dir = None
        if "scene" in exports and result_bytes(scan, request.options) > in_memory_limit():
            # too large to hold: the scene is written as it is produced, as a folder of arrays
            scene_dir = out.tmp / "scene"
            exports.remove("scene")
            sink.info(f"the result is larger than memory allows: writing it as the scene folder {out.target / 'scene'}")
        start = time.time()
        rec = model.reconstruct(scan, request.options, extrinsics=ext, intrinsics=k, progress=sink,
                                cache_dir=cache, scene_dir=scene_dir, **({"pool": pool} if pool is not None else {}))
        if postprocess is not None:
            rec = postprocess(rec)
        seconds = time.time() - start
        files = write_exports(rec, out.tmp, exports, conf_threshold=request.conf_threshold, progress=sink.update)
        if scene_dir is not None:
            files = {"scene": "scene", **files}
        folder = out.commit()
    except KeyboardInterrupt:
        out.discard()
        if cache.is_dir():
            sink.warn(f"interrupted: the finished passes are kept in {cache}; run the same command again to resume")
        raise
    except BaseException:
        out.discard()
        raise
    return RunResult(folder=folder, files=files, views=len(rec), size=(rec.width, rec.height), seconds=seconds)


def result_bytes(scan, options) -> int:
    """Bytes of a run's per-view results in memory: processed pixels, depth, confidence, sky,
    and with Gaussians one per pixel (about 64 bytes each)."""
    from da3_plugins.core.images import stream_target

    h, w = stream_target(scan.refs, options.process_res, options.process_res_method)
    return len(scan.refs) * h * w * (3 + 4 + 4 + 1 + (64 if options.infer_gs else 0))


def in_memory_limit() -> int:
    """Results above this many bytes go to a scene folder as they are produced: a third of the
    machine's memory (``DA3P_IN_MEMORY_LIMIT`` overrides it, in bytes)."""
    env = os.environ.get("DA3P_IN_MEMORY_LIMIT")
    if env:
        return int(float(env))
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 3)
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def work_folder(output: Path) -> Path:
    """Where a run to ``output`` keeps its chunk predictions until it succeeds: a hidden folder
    beside it (``.<name>.da3p-work``), so rerunning the same command after an interruption
    resumes."""
    output = Path(output)
    return output.parent / f".{output.name}.da3p-work"


def export_scene(scene, output, exports, *, conf_threshold="auto", overwrite: bool = False,
                 progress: Optional[Progress] = None) -> RunResult:
    """A saved scene file to an output folder of exports (``da3p export``)."""
    from da3_plugins.core.reconstruction import Reconstruction

    names = parse_export_list(exports) if isinstance(exports, str) else tuple(exports)
    rec = Reconstruction.load(scene)  # SceneFileError is a UserInputError naming the file
    sink = progress or Progress()
    with OutputDir(output, overwrite) as out:
        files = write_exports(rec, out.tmp, names, conf_threshold=conf_threshold, progress=sink.update)
    return RunResult(folder=out.target, files=files, views=len(rec), size=(rec.width, rec.height), seconds=0.0)


# --------------------------------------------------------------------------- camera files


def _load_matrix_file(path: str, flag: str, key: str):
    """A float64 array from .npy, .npz (``key`` or the only array), .json ({key: ...} or a list)
    or whitespace text."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{flag} {path}: no such file")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = z.files
                name = key if key in names else (names[0] if len(names) == 1 else None)
                if name is None:
                    raise UserInputError(f"{flag} {path}: expected an array named {key!r} (found {', '.join(names)})")
                arr = z[name]
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
            arr = np.asarray(data[key] if isinstance(data, dict) else data, dtype=np.float64)
        else:
            arr = np.loadtxt(p, dtype=np.float64)
    except UserInputError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise UserInputError(f"{flag} {path}: cannot read a matrix file ({type(exc).__name__}: {exc})") from None
    return np.asarray(arr, dtype=np.float64)


def _label(value) -> str:
    return str(value) if isinstance(value, (str, os.PathLike)) else "(the given array)"


def read_camera_files(poses: Any, intrinsics: Any, n: int):
    """Known cameras from files -> (world-to-camera (n, 3|4, 4) or None, K (n, 3, 3) or None).

    Intrinsics: (n, 3, 3), one 3x3 for every view, or n rows of 9.  Poses: (n, 4, 4) or
    (n, 3, 4), or n rows of 12 or 16."""
    import numpy as np

    ext = k = None
    if intrinsics is not None and not isinstance(intrinsics, (str, os.PathLike)):
        k = np.asarray(intrinsics, np.float64)
    elif intrinsics:
        k = _load_matrix_file(intrinsics, "--intrinsics", "intrinsics")
    if k is not None:
        if k.shape == (3, 3):
            k = np.tile(k, (n, 1, 1))
        elif k.ndim == 2 and k.shape[1] == 9:
            k = k.reshape(-1, 3, 3)
        if k.shape != (n, 3, 3):
            raise UserInputError(f"--intrinsics {_label(intrinsics)}: expected {n} 3x3 matrices for {n} images, "
                                 f"got shape {k.shape}")
    if poses is not None and not isinstance(poses, (str, os.PathLike)):
        ext = np.asarray(poses, np.float64)
    elif poses:
        ext = _load_matrix_file(poses, "--poses", "extrinsics")
    if ext is not None:
        if ext.ndim == 2 and ext.shape[1] in (12, 16):
            ext = ext.reshape(-1, ext.shape[1] // 4, 4)
        if ext.shape not in ((n, 4, 4), (n, 3, 4)):
            raise UserInputError(f"--poses {_label(poses)}: expected {n} world-to-camera 4x4 or 3x4 matrices for "
                                 f"{n} images, got shape {ext.shape}")
    return ext, k
