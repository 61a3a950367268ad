"""Photos in, a :class:`~.reconstruction.Reconstruction` out.

For one pass the steps reproduce the official ``DepthAnything3.inference`` (input processor,
pose normalisation, network, output processor, alignment to given poses; the network part is
:class:`~.model.predictor.DA3Predictor`), with these additions:

* any number of views in bounded memory: inputs are checked (headers only) before any network
  time, then read, turned upright, resized and released one at a time; above
  ``max_views_per_pass`` the views run in overlapping chunks that :mod:`.stitch` joins (robust
  Sim(3) joints, loop closure, a global pose graph), with chunk predictions cached on disk so
  an interrupted run resumes (``cache_dir``);
* any predictor: ``model`` may be a DA3 model or any object following :mod:`.predictor`;
* everything is float32 unless the model's backbone precision says otherwise (the official
  ``forward`` autocasts to float16 on CPU; ``auto``, the loading default, is fp32 on CPUs without
  AMX); the scene records the precision actually used;
* the processed images are kept as the resized uint8 pixels (the official pipeline
  de-normalises its float tensor and truncates, which loses one level on some pixels).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import conventions as conv
from .chunks import ChunkCache, chunk_ranges, default_overlap, input_identity, run_key
from .errors import OptionError, UserInputError
from .gaussian_sets import transform_gaussians
from .images import ImageScan, LoadedImage, frame_source, load_processed, scan_images, stream_target
from .model.predictor import DA3Predictor, normalize_extrinsics
from .options import REF_VIEW_STRATEGIES, ReconstructOptions, SceneOptions
from .precision import backbone_precision, model_precision, resolve_precision
from .predictor import ChunkPool, PooledPredictor, Predictor
from .preprocess import transform_intrinsics
from .reconstruction import Reconstruction
from .stitch import stitch

__all__ = ["REF_VIEW_STRATEGIES", "ProgressEvent", "ReconstructOptions", "as_predictor", "chunk_ranges",
           "default_max_views", "normalize_extrinsics", "reconstruct", "resolve_options", "transform_gaussians"]


@dataclass
class ProgressEvent:
    """One progress report: ``stage`` ("load", "preprocess", "infer", "align", "assemble"),
    ``done`` of ``total``."""

    stage: str
    done: int
    total: int
    message: str = ""


ProgressFn = Callable[[ProgressEvent], None]


CPU_TOKENS_PER_PASS = 32768
"""On a CPU a pass holds at most this many patch tokens (33 views at 504x378): the global
attention makes a view's cost grow with the pass (embedded model at 504 px, 2 cores: 0.40 s a
view in passes of 8, 0.77 in passes of 32, 1.16 in passes of 64), so long inputs run in
chunks of that size rather than in passes as large as memory allows."""


def default_max_views(model, h: int, w: int) -> int:
    """Views per network pass that fit comfortably in the device's free memory, and on a CPU
    at most :data:`CPU_TOKENS_PER_PASS` patch tokens.

    A heuristic from measured peaks (CPU, float32): about 60 MB per 504x378 view for the
    small model, growing with the backbone width; capped at 256 views.  Predictors other than
    DA3 models get 64.
    """
    if not hasattr(model, "config") or not hasattr(model, "device"):
        return 64
    width = getattr(getattr(model.config, "backbone", None), "embed_dim", None)
    if width is None:  # nested: the giant branch dominates
        width = 1536
    per_view = 0.06e9 * (width / 384) ** 1.5 * (h * w) / (504 * 378)
    device = model.device
    free = None
    cap = 256
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        cap = min(cap, max(8, CPU_TOKENS_PER_PASS // max(1, (h // 14) * (w // 14))))
        with contextlib.suppress(ValueError, OSError, AttributeError):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if not free:
        return min(cap, 64)
    return int(max(4, min(cap, 0.5 * free / per_view)))


def resolve_options(options: Optional[ReconstructOptions] = None, overrides: Optional[dict] = None) -> ReconstructOptions:
    """``options`` (default: the defaults) with keyword ``overrides`` applied, validated.

    An unknown keyword is an :class:`OptionError` naming it."""
    base = options if options is not None else ReconstructOptions()
    if not isinstance(base, ReconstructOptions):
        raise OptionError(f"options: expected a ReconstructOptions, got {type(base).__name__}")
    if not overrides:
        return base
    known = {f.name for f in ReconstructOptions.option_fields()}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise OptionError(f"{unknown[0]}: not a reconstruction option; known: {', '.join(sorted(known))}")
    return replace(base, **overrides)


def as_predictor(model) -> Predictor:
    """A DA3 model wrapped as a predictor; any other object must follow the protocol."""
    if hasattr(model, "net") and hasattr(model, "preset"):
        return DA3Predictor(model)
    missing = [a for a in ("predict", "predicts_cameras", "has_gaussians") if not hasattr(model, a)]
    if missing:
        raise TypeError(f"model: {type(model).__name__} is neither a DA3 model nor a predictor "
                        f"(missing {', '.join(missing)}; see da3_plugins.core.predictor)")
    return model


def _check_poses(extrinsics, intrinsics, n: int, predictor, label: str):
    """(all-poses extrinsics or None, partial-poses extrinsics or None, intrinsics or None)."""
    if extrinsics is None and intrinsics is None:
        return None, None, None
    if extrinsics is not None and intrinsics is None:
        raise UserInputError("extrinsics: known poses need intrinsics too (pass both)")
    k_in = np.asarray(intrinsics, np.float64)
    if k_in.shape == (3, 3):
        k_in = np.tile(k_in, (n, 1, 1))
    if k_in.shape != (n, 3, 3):
        raise UserInputError(f"intrinsics: expected ({n}, 3, 3) for {n} images, got {k_in.shape}")
    if extrinsics is None:
        warnings.warn("intrinsics without extrinsics are not used: DA3 conditions on known "
                      "cameras only when both are given", stacklevel=4)
        return None, None, None
    ext_in = np.asarray(extrinsics, np.float64)
    if ext_in.shape not in ((n, 3, 4), (n, 4, 4)):
        raise UserInputError(f"extrinsics: expected ({n}, 4, 4) or ({n}, 3, 4) for {n} images, got {ext_in.shape}")
    ext_in = conv.as_4x4(ext_in)
    known = np.isfinite(ext_in).all((1, 2))
    if not known.any():
        raise UserInputError("extrinsics: no view has a finite pose (NaN rows mark views without one)")
    if not np.all(np.isfinite(k_in)):
        raise UserInputError("extrinsics/intrinsics: values must be finite")
    if not predictor.predicts_cameras:
        raise UserInputError(f"extrinsics: {label} cannot be conditioned on poses")
    if known.all():
        return ext_in, None, k_in
    return None, ext_in, k_in


def reconstruct(
    model,
    images,
    options: Optional[ReconstructOptions] = None,
    *,
    extrinsics: Optional[np.ndarray] = None,
    intrinsics: Optional[np.ndarray] = None,
    fps: Optional[float] = 2.0,
    progress: Optional[ProgressFn] = None,
    cache_dir: Optional[os.PathLike] = None,
    scene_dir: Optional[os.PathLike] = None,
    pool: Optional[ChunkPool] = None,
    **option_values,
) -> Reconstruction:
    """Run DA3 (or any :class:`~.predictor.Predictor`) on photos; see :meth:`DA3Model.reconstruct`.

    ``options`` is a :class:`ReconstructOptions`; keywords named like its fields override it.
    ``extrinsics`` may hold NaN rows for views without a known pose: the posed views then anchor
    the global alignment and the result is in their frame.  ``cache_dir``: where chunk
    predictions are kept so that rerunning the same call after an interruption resumes (kept on
    failure, removed on success; default: a temporary folder).  ``scene_dir``: write the result
    as it is produced into a scene folder there (memory-mapped ``.npy`` files, see
    docs/scene-file.md) and return it read back memory-mapped: results larger than memory.
    ``pool``: workers holding the same model (:class:`~.predictor.ChunkPool`, e.g.
    ``da3_plugins.ray_backend.RayChunkPool``) that run the passes of a long input while the
    joining, loops and pose graph stay here; the result equals the serial one."""
    opts = resolve_options(options, option_values)
    net = getattr(model, "net", None)
    if (net is not None and opts.precision is not None and model_precision(net) is not None
            and resolve_precision(opts.precision, _device(net)) != model_precision(net)):
        with backbone_precision(model, opts.precision):
            return reconstruct(model, images, opts.replace(precision=None), extrinsics=extrinsics,
                               intrinsics=intrinsics, fps=fps, progress=progress, cache_dir=cache_dir,
                               scene_dir=scene_dir, pool=pool)
    predictor = as_predictor(model)
    if pool is not None:
        predictor = PooledPredictor(predictor, pool)
    label = getattr(model, "preset", None) or predictor.name
    report = progress or (lambda ev: None)
    if opts.infer_gs and not predictor.has_gaussians:
        raise OptionError(f"infer_gs: {label} has no Gaussian head (use da3-giant or da3nested-giant-large)")
    if opts.use_ray_pose and not predictor.predicts_cameras:
        raise OptionError(f"use_ray_pose: {label} predicts no cameras")

    report(ProgressEvent("load", 0, 1, "checking the inputs"))
    scan = _scan(images, fps, opts.skip_unreadable)
    refs = scan.refs
    n = len(refs)
    report(ProgressEvent("load", 1, 1, f"{n} images" + (f", {len(scan.skipped)} skipped" if scan.skipped else "")))
    ext_all, ext_some, k_in = _check_poses(extrinsics, intrinsics, n, predictor, label)

    writer = None
    if scene_dir is not None:  # results straight to the memory-mapped files of a scene folder
        from .scene_io import SceneWriter

        h, w = stream_target(refs, opts.process_res, opts.process_res_method)
        writer = SceneWriter(scene_dir, n, h, w, conf=False, sky=False)
    try:
        return _reconstruct(model, predictor, opts, scan, ext_all, ext_some, k_in, report, cache_dir, writer)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _reconstruct(model, predictor, opts, scan, ext_all, ext_some, k_in, report, cache_dir, writer):
    refs, n, net = scan.refs, len(scan.refs), getattr(model, "net", None)
    report(ProgressEvent("preprocess", 0, n, "reading and resizing"))
    pixels, transforms = load_processed(
        refs, opts.process_res, opts.process_res_method, fast_decode=opts.fast_decode,
        out=None if writer is None else writer.images,
        progress=lambda done, total: report(ProgressEvent("preprocess", done, total, "reading and resizing")))
    h, w = pixels.shape[1:3]
    report(ProgressEvent("preprocess", n, n, f"{w}x{h}"))
    k_proc = transform_intrinsics(k_in, transforms) if k_in is not None else None

    size = opts.max_views_per_pass or default_max_views(model, h, w)
    if size < 2 and n > 1:
        raise OptionError(f"max_views_per_pass: expected at least 2, got {size}")
    overlap = opts.chunk_overlap if opts.chunk_overlap is not None else default_overlap(size)
    if n > size and not 1 <= overlap < size:
        raise OptionError(f"chunk_overlap: expected 1 .. {size - 1}, got {overlap}")
    chunks = chunk_ranges(n, size, overlap)

    cache = None
    if len(chunks) > 1:
        key = run_key(predictor.name, opts.replace(precision=model_precision(net) if net is not None else None
                                                   ).cache_key(),
                      input_identity([r.source for r in refs], [r.name for r in refs], scan.sizes),
                      # photos given as arrays have no file to date: their pixels are the identity
                      [run_key(pixels[i]) for i, r in enumerate(refs) if r.kind == "memory"], size, overlap,
                      ext_all if ext_all is not None else "", k_proc if ext_all is not None else "")
        cache = ChunkCache(cache_dir, key)
    ok = False
    try:
        rng_ctx = torch.random.fork_rng(devices=[]) if opts.seed is not None else contextlib.nullcontext()
        with rng_ctx:
            if opts.seed is not None:
                torch.manual_seed(opts.seed)
            res = stitch(predictor, pixels, chunks, opts, cache=cache,
                         conditioned=None if ext_all is None else (ext_all, k_proc), known_poses=ext_some,
                         report=lambda stage, done, total, msg="": report(ProgressEvent(stage, done, total, msg)),
                         alloc=None if writer is None else (lambda key, shape, dtype: writer.declare(key)),
                         gaussian_sink=None if writer is None else (lambda g: writer.add_gaussians(**vars(g))))
        ok = True
    except UserInputError:
        ok = True  # nothing to resume: the input must change
        raise
    finally:
        if cache is not None:
            cache.close(success=ok)

    camera_source = "predicted" if predictor.predicts_cameras else "none"
    if ext_all is not None or ext_some is not None:
        camera_source = "input"
    scene_options = SceneOptions.of_run(
        opts, max_views_per_pass=size, chunk_overlap=overlap,
        precision=model_precision(net) if net is not None else None,
        camera_source=camera_source, passes=res.passes, alignment=res.alignment,
        joints=tuple(j.record() for j in res.joints),
        image_files=tuple(Path(r.source).name if r.kind == "file" else "" for r in refs),
        skipped_files=tuple(f"{Path(p).name}: {why}" for p, why in scan.skipped),
        **frame_source(refs),
    )
    if writer is not None:
        writer.set_cameras(extrinsics=res.extrinsics, intrinsics=res.intrinsics,
                           original_sizes=scan.sizes.astype(np.int64), pixel_transform=transforms)
        path = writer.finish(image_names=[r.name for r in refs], is_metric=res.is_metric, model=predictor.name,
                             options=scene_options)
        return Reconstruction.load(path)
    return Reconstruction(
        images=pixels, depth=res.depth, extrinsics=res.extrinsics, intrinsics=res.intrinsics, conf=res.conf,
        original_sizes=scan.sizes.astype(np.int64), pixel_transform=transforms,
        image_names=[r.name for r in refs], sky=res.sky, gaussians=res.gaussians, is_metric=res.is_metric,
        model=predictor.name, options=scene_options,
    )


def _scan(images, fps, skip_unreadable):
    if isinstance(images, ImageScan):
        return images
    if _is_loaded(images):
        scan = scan_images([im.pixels for im in images], fps=fps)
        scan.refs = [replace(ref, name=im.name) for ref, im in zip(scan.refs, images)]
        return scan
    return scan_images(images, fps=fps, skip_unreadable=skip_unreadable)


def _device(net) -> torch.device:
    return next(net.parameters()).device


def _is_loaded(images) -> bool:
    return isinstance(images, (list, tuple)) and len(images) > 0 and all(isinstance(i, LoadedImage) for i in images)
