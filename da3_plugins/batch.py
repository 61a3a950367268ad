"""``da3p batch``: many scenes, each written as ``da3p reconstruct`` would write it.

* **Scenes** (:func:`find_jobs`): ROOT holds one folder (or video) per scene, or ROOT is a
  manifest: one path per line, or JSON lines ``{"path": ..., "name": ..., "poses": ...,
  "intrinsics": ..., "fps": ..., "options": {...}}`` (relative paths are relative to the
  manifest).  A scene folder in the training-data format (``cameras.json`` or a COLMAP project,
  docs/training-data.md) brings its own cameras, and its depth when it has some: the
  reconstruction is conditioned on the cameras and its depth RANSAC-aligned to the measured
  depth (teacher pseudo-labels).
* **Each scene** (:func:`run_scene`) goes to ``OUT/<scene>/`` through
  :func:`~da3_plugins.runner.run_reconstruct`: built under a temporary name and renamed, so an
  output folder is never partial.  A scene whose folder exists is complete and skipped unless
  ``overwrite``; a failed scene is a record, never the end of the batch.
* **The run** (:func:`run_batch`): serial in this process (models loaded once), or on Ray
  workers (:mod:`da3_plugins.ray_backend`).  ``OUT/batch.jsonl`` gets one record per scene as it
  finishes; the exit code is 0 when every scene succeeded, 2 when some scene had bad input (and
  nothing worse happened), 1 otherwise.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from da3_plugins.core.errors import UserInputError, first_line
from da3_plugins.core.export.registry import DEFAULT_EXPORTS
from da3_plugins.core.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from da3_plugins.core.options import ReconstructOptions
from da3_plugins.runner import ModelCache, ModelLoader, Progress, RunRequest, run_reconstruct

__all__ = ["BATCH_LOG", "BatchSettings", "SceneJob", "SceneRecord", "exit_code", "find_jobs", "run_batch",
           "run_scene"]

BATCH_LOG = "batch.jsonl"
"""One JSON record per scene of the last run, in ``OUT``."""

_MANIFEST_FIELDS = {"path", "inputs", "name", "poses", "intrinsics", "fps", "options"}


@dataclass(frozen=True)
class SceneJob:
    """One scene of a batch.

    name: the output folder's name under ``OUT``.
    inputs: image files, folders or videos (as ``da3p reconstruct`` takes them).
    poses, intrinsics: camera files (as ``--poses`` / ``--intrinsics``).
    dataset: a training-data scene folder: inputs, cameras and measured depth come from it.
    fps: frames per second sampled from videos (None: the batch's).
    options: this scene's option overrides, as (name, value) pairs.
    """

    name: str
    inputs: Tuple[str, ...] = ()
    poses: Optional[str] = None
    intrinsics: Optional[str] = None
    dataset: Optional[str] = None
    fps: Optional[float] = None
    options: Tuple[Tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class BatchSettings:
    """What every scene of a batch shares."""

    output: str
    model: Optional[str] = None
    exports: Tuple[str, ...] = DEFAULT_EXPORTS
    options: ReconstructOptions = field(default_factory=ReconstructOptions)
    fps: float = 2.0
    conf_threshold: Any = "auto"
    overwrite: bool = False


@dataclass(frozen=True)
class SceneRecord:
    """One line of ``batch.jsonl``: status "ok", "failed" or "skipped"; ``code`` 2 for bad
    input, 1 for any other failure, 0 otherwise."""

    scene: str
    status: str
    seconds: float = 0.0
    views: int = 0
    error: str = ""
    code: int = 0
    output: str = ""
    aligned: str = ""

    @classmethod
    def failure(cls, job: SceneJob, error: str, code: int, seconds: float = 0.0) -> "SceneRecord":
        return cls(scene=job.name, status="failed", seconds=round(seconds, 2), error=error, code=code)

    def to_json(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v != "" or k in ("error",)}


# --------------------------------------------------------------------------- the scenes


def find_jobs(root: str) -> List[SceneJob]:
    """The scenes of ROOT: a folder of scene folders and videos, or a manifest file.

    Problems with ROOT itself (missing, no scene, a bad manifest line, two scenes of one name)
    are a :class:`UserInputError` before anything runs; a scene's own bad input is found when
    it runs."""
    path = Path(root).expanduser().absolute()  # workers (Ray) may run elsewhere than this folder
    if not path.exists():
        raise UserInputError(f"{root}: no such folder or manifest file")
    jobs = _manifest_jobs(path) if path.is_file() else _folder_jobs(path)
    if not jobs:
        raise UserInputError(f"{root}: no scenes (expected one folder or video per scene, or a manifest file)")
    seen: Dict[str, str] = {}
    for job in jobs:
        if job.name in seen:
            raise UserInputError(f"{root}: two scenes are named {job.name!r} ({seen[job.name]} and "
                                 f"{job.dataset or job.inputs[0]}); give them names in a manifest")
        seen[job.name] = job.dataset or job.inputs[0]
    return jobs


def _folder_jobs(root: Path) -> List[SceneJob]:
    from da3_plugins.core.datasets import is_scene_folder

    jobs, images = [], []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            jobs.append(SceneJob(name=p.name, dataset=str(p)) if is_scene_folder(p) else
                        SceneJob(name=p.name, inputs=(str(p),)))
        elif p.suffix.lower() in VIDEO_EXTENSIONS:
            jobs.append(SceneJob(name=p.stem, inputs=(str(p),)))
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
    if images and not jobs:
        raise UserInputError(f"{root}: holds photos, not scene folders; for one scene use da3p reconstruct {root}, "
                             "for many put each scene's photos in a folder of its own")
    return jobs


def _manifest_jobs(manifest: Path) -> List[SceneJob]:
    from da3_plugins.core.datasets import is_scene_folder

    try:
        lines = manifest.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{manifest}: cannot read the manifest ({exc})") from None
    base = manifest.parent
    where = lambda i: f"{manifest}:{i}"  # noqa: E731
    resolve = lambda p: str(Path(p).expanduser() if Path(p).expanduser().is_absolute() else base / p)  # noqa: E731
    jobs = []
    for i, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("{"):
            try:
                entry = json.loads(text)
            except ValueError as exc:
                raise UserInputError(f"{where(i)}: not valid JSON ({exc})") from None
            unknown = sorted(set(entry) - _MANIFEST_FIELDS)
            if unknown:
                raise UserInputError(f"{where(i)}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_MANIFEST_FIELDS))})")
            paths = entry.get("inputs") or ([entry["path"]] if entry.get("path") else [])
            if isinstance(paths, str):
                paths = [paths]
            if not paths:
                raise UserInputError(f"{where(i)}: give 'path' (or 'inputs', a list)")
            options = entry.get("options") or {}
            if not isinstance(options, dict):
                raise UserInputError(f"{where(i)}: 'options' must be an object of reconstruction options")
            try:
                ReconstructOptions.from_dict(options)
            except UserInputError as exc:
                raise UserInputError(f"{where(i)}: {first_line(exc)}") from None
            fps = entry.get("fps")
            if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
                raise UserInputError(f"{where(i)}: 'fps' must be a positive number")
            inputs = tuple(resolve(p) for p in paths)
            name = entry.get("name") or _default_name(inputs[0])
            dataset = inputs[0] if len(inputs) == 1 and Path(inputs[0]).is_dir() and is_scene_folder(inputs[0]) else None
            jobs.append(SceneJob(name=_check_name(name, where(i)), inputs=() if dataset else inputs,
                                 poses=resolve(entry["poses"]) if entry.get("poses") else None,
                                 intrinsics=resolve(entry["intrinsics"]) if entry.get("intrinsics") else None,
                                 dataset=dataset, fps=fps, options=tuple(sorted(options.items()))))
        else:
            p = resolve(text)
            dataset = p if Path(p).is_dir() and is_scene_folder(p) else None
            jobs.append(SceneJob(name=_check_name(_default_name(p), where(i)), inputs=() if dataset else (p,),
                                 dataset=dataset))
    return jobs


def _default_name(path: str) -> str:
    p = Path(path)
    return p.stem if p.suffix.lower() in VIDEO_EXTENSIONS else p.name


def _check_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name \
            or name == Path(BATCH_LOG).name:
        raise UserInputError(f"{where}: {name!r} cannot name an output folder")
    return name


# --------------------------------------------------------------------------- one scene


def scene_output(settings: BatchSettings, job: SceneJob) -> Path:
    return Path(settings.output).expanduser() / job.name


def is_complete(settings: BatchSettings, job: SceneJob) -> bool:
    """A scene's output folder exists only complete (it is renamed into place at the end)."""
    out = scene_output(settings, job)
    return out.is_dir() and any(out.iterdir())


def _remove_leftovers(out: Path) -> None:
    """Temporary folders of a run of this scene that was killed (never the resume cache)."""
    for p in out.parent.glob(f".{out.name}.*"):
        if p.name.endswith(".partial") or ".old-" in p.name:
            shutil.rmtree(p, ignore_errors=True)


def run_scene(job: SceneJob, settings: BatchSettings, get_model: Callable, progress: Progress) -> SceneRecord:
    """One scene to ``OUT/<name>/`` exactly as ``da3p reconstruct`` writes it; any failure is
    the returned record (an interruption is not: it propagates)."""
    start = time.time()
    out = scene_output(settings, job)
    _remove_leftovers(out)
    try:
        options = settings.options
        if job.options:
            options = ReconstructOptions.from_dict({**settings.options.to_dict(), **dict(job.options)})
        inputs, poses, intrinsics, postprocess = job.inputs, job.poses, job.intrinsics, None
        if job.dataset is not None:
            from da3_plugins.core.pseudo_labels import align_to_measured, scene_inputs

            scene = scene_inputs(job.dataset)
            inputs, poses, intrinsics = scene.images, scene.extrinsics, scene.intrinsics
            if scene.measured is not None:
                measured = scene.measured
                stats: Dict[str, Any] = {}

                def postprocess(rec):
                    aligned, info = align_to_measured(rec, measured)
                    stats.update(info)
                    return aligned
        request = RunRequest(inputs=inputs, output=str(out), model=settings.model, exports=settings.exports,
                             options=options, poses=poses, intrinsics=intrinsics,
                             fps=job.fps if job.fps is not None else settings.fps,
                             conf_threshold=settings.conf_threshold, overwrite=settings.overwrite)
        result = run_reconstruct(request, get_model, progress, postprocess=postprocess)
    except KeyboardInterrupt:
        raise
    except UserInputError as exc:
        return SceneRecord.failure(job, first_line(exc), 2, time.time() - start)
    except MemoryError:
        return SceneRecord.failure(job, "out of memory (try a smaller --process-res or --max-views-per-pass)", 1,
                                   time.time() - start)
    except Exception as exc:  # noqa: BLE001 - one scene's failure is its record, the batch goes on
        text = first_line(exc)
        if "out of memory" in text.lower():
            text = f"out of memory ({text}); try a smaller --process-res or --max-views-per-pass"
        return SceneRecord.failure(job, f"{type(exc).__name__}: {text}", 1, time.time() - start)
    aligned = ""
    if postprocess is not None:
        aligned = f"{stats.get('aligned', 0)}/{stats.get('views', result.views)} views aligned to measured depth"
    return SceneRecord(scene=job.name, status="ok", seconds=round(time.time() - start, 2), views=result.views,
                       output=str(result.folder), aligned=aligned)


# --------------------------------------------------------------------------- the batch


def exit_code(records: List[SceneRecord]) -> int:
    """0: every scene succeeded (or was already done); 1: some scene failed for another reason
    than its input; 2: the only failures were bad input."""
    codes = {r.code for r in records if r.status == "failed"}
    return 1 if 1 in codes else (2 if codes else 0)


def run_batch(jobs: List[SceneJob], settings: BatchSettings, progress: Progress, *,
              load_model: Optional[Callable] = None, ray: Optional[dict] = None) -> List[SceneRecord]:
    """Every job, serially (``ray=None``) or on Ray (``ray``: ``{"address": ..., "spec":
    WorkerSpec}``); ``load_model(source, precision)`` loads a model (default: as ``da3p``).
    Writes ``OUT/batch.jsonl`` as scenes finish and returns the records in job order."""
    out = Path(settings.output).expanduser()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"-o {settings.output}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"-o {settings.output}: cannot create the folder ({exc.strerror})") from None
    if load_model is None:
        load_model = ModelLoader()
    records: Dict[str, SceneRecord] = {}
    total = len(jobs)
    log = open(out / BATCH_LOG, "w")

    def emit(record: SceneRecord) -> None:
        records[record.scene] = record
        log.write(json.dumps(record.to_json()) + "\n")
        log.flush()
        _announce(progress, record, len(records), total)

    try:
        todo = []
        for job in jobs:
            if not settings.overwrite and is_complete(settings, job):
                emit(SceneRecord(scene=job.name, status="skipped", output=str(scene_output(settings, job)),
                                 error="output complete from an earlier run (--overwrite redoes it)"))
            else:
                todo.append(job)
        progress.update("batch", len(records), total, f"{len(todo)} to run")
        if ray is None:
            models = ModelCache(load_model)
            for job in todo:
                inner = _inner_progress(progress, job)
                emit(run_scene(job, settings, models, inner))
        elif todo:
            from da3_plugins.ray_backend import ray_session, run_scenes

            with ray_session(ray.get("address"), info=progress.info):
                run_scenes(todo, settings, ray["spec"], emit, task=run_scene, failure=SceneRecord.failure,
                           loader=load_model, info=progress.info)
    finally:
        log.close()
        progress.close()
    return [records[j.name] for j in jobs if j.name in records]


def _inner_progress(progress: Progress, job: SceneJob) -> Progress:
    """A scene's own progress: JSON events tagged with the scene; no bars (the batch has one)."""
    if progress.mode == "json":
        from da3_plugins.runner import JsonProgress

        return JsonProgress(getattr(progress, "stream", None), scene=job.name)
    return _Quiet()


class _Quiet(Progress):
    """No bars, but warnings still reach stderr."""


def _announce(progress: Progress, record: SceneRecord, done: int, total: int) -> None:
    if progress.mode == "json":
        progress.event("scene", **record.to_json())
    else:
        mark = {"ok": "ok", "skipped": "skipped", "failed": "FAILED"}[record.status]
        detail = (f"{record.views} views, {record.seconds:.1f} s" if record.status == "ok" else record.error)
        progress.info(f"[{done}/{total}] {record.scene}: {mark} ({detail})")
    progress.update("batch", done, total, record.scene)


def format_table(records: List[SceneRecord]) -> str:
    """The closing table: one row per scene, then the totals."""
    width = max([5] + [len(r.scene) for r in records])
    rows = [f"{'scene':<{width}}  {'status':<7}  {'views':>5}  {'seconds':>8}  note"]
    for r in records:
        note = r.error if r.status != "ok" else r.aligned
        rows.append(f"{r.scene:<{width}}  {r.status:<7}  {r.views:>5}  {r.seconds:>8.1f}  {note}")
    counts = {s: sum(r.status == s for r in records) for s in ("ok", "skipped", "failed")}
    ran = sum(r.seconds for r in records if r.status == "ok")
    rows.append(f"{len(records)} scenes: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed; "
                f"{ran:.1f} s of reconstruction")
    return "\n".join(rows)
