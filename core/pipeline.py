"""Photos in, a :class:`~.reconstruction.Reconstruction` out.

The steps reproduce the official ``DepthAnything3.inference`` (input processor, pose
normalisation, network, output processor, alignment to given poses), with three additions:

* any number of views: above ``max_views_per_pass`` the views are run in overlapping chunks
  and each chunk is placed onto the previous ones by a Sim(3) fit of the dense points of the
  views they share (or, with given poses, each chunk is aligned to those poses);
* everything is float32 unless the model's backbone dtype says otherwise (the official
  ``forward`` autocasts to float16 on CPU);
* the processed images are kept as the resized uint8 pixels (the official pipeline
  de-normalises its float tensor and truncates, which loses one level on some pixels).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from . import conventions as conv
from .images import LoadedImage, load_images
from .errors import OptionError, UserInputError
from .geometry import apply_sim3_to_w2c, umeyama
from .options import REF_VIEW_STRATEGIES, ReconstructOptions, SceneOptions
from .points import depth_to_points
from .precision import backbone_precision, precision_name, resolve_dtype as resolve_precision
from .preprocess import normalize, process_images, transform_intrinsics
from .quaternions import matrix_to_quat_wxyz, quat_positive_w, quat_wxyz_multiply
from .reconstruction import GaussianSet, Reconstruction

__all__ = ["REF_VIEW_STRATEGIES", "ProgressEvent", "ReconstructOptions", "chunk_ranges", "normalize_extrinsics",
           "reconstruct", "resolve_options", "transform_gaussians"]
SKY_THRESHOLD = 0.5  # the official Prediction's sky mask threshold
RANSAC_MIN_VIEWS = 10  # the official API aligns to given poses with RANSAC from 10 views


@dataclass
class ProgressEvent:
    """One progress report: ``stage`` ("load", "preprocess", "infer", "align"), ``done`` of ``total``."""

    stage: str
    done: int
    total: int
    message: str = ""


ProgressFn = Callable[[ProgressEvent], None]


# --------------------------------------------------------------------------- poses


def normalize_extrinsics(w2c: torch.Tensor) -> torch.Tensor:
    """The official pose-conditioning normalisation of (B, N, 4, 4) world-to-camera poses.

    View 0 becomes the identity; translations are divided by the median camera distance to
    view 0 (``torch.median``: the lower median for even counts, view 0 included), clamped
    to at least 0.1.
    """
    rel = w2c @ torch.linalg.inv(w2c[:, :1])
    rot = rel[..., :3, :3]
    centres = -(rot.transpose(-1, -2) @ rel[..., :3, 3:4])[..., 0]
    median = torch.clamp(torch.median(centres.norm(dim=-1)), min=0.1)
    out = rel.clone()
    out[..., :3, 3] = rel[..., :3, 3] / median
    return out


def _centres(w2c: np.ndarray) -> np.ndarray:
    return conv.camera_centers(w2c)


def align_input_poses(pred_w2c: np.ndarray, input_w2c: np.ndarray, seed: int = 42):
    """Sim(3) (R, t, s) with predicted centre ~= s R input centre + t, as the official API fits it.

    Below :data:`RANSAC_MIN_VIEWS` views a plain Umeyama fit of the camera centres; from
    there a RANSAC variant: 10 draws of max(3, ceil(N/2)) views (``numpy.random.default_rng(seed)``),
    inliers within the median nearest-neighbour distance after a global pre-fit, score
    (inlier count, then mean error), refit on the inliers when there are at least 3.
    Two views (collinear centres) are accepted: the scale is still defined.
    """
    ref, est = _centres(pred_w2c), _centres(input_w2c)
    n = ref.shape[0]
    collinear = n < 3
    if n < RANSAC_MIN_VIEWS:
        return umeyama(est, ref, allow_collinear=collinear)
    r0, t0, s0 = umeyama(est, ref)
    pre = s0 * est @ r0.T + t0
    nn = np.linalg.norm(pre[:, None, :] - ref[None, :, :], axis=-1).min(1)
    thresh = float(np.median(nn))
    rng = np.random.default_rng(seed)
    sub_n = max(3, (n + 1) // 2)
    best, best_score, best_inliers = (r0, t0, s0), (-1, np.inf), None
    for _ in range(10):
        pick = rng.choice(np.arange(n), size=sub_n, replace=False)
        try:
            r, t, s = umeyama(est[pick], ref[pick])
        except ValueError:
            continue
        err = np.linalg.norm(s * est @ r.T + t - ref, axis=1)
        inl = err <= thresh
        k = int(inl.sum())
        mean = float(err[inl].mean()) if k else np.inf
        if k > best_score[0] or (k == best_score[0] and mean < best_score[1]):
            best, best_score, best_inliers = (r, t, s), (k, mean), inl
    if best_inliers is not None and best_inliers.sum() >= 3:
        return umeyama(est[best_inliers], ref[best_inliers])
    return best


# --------------------------------------------------------------------------- Gaussians


def transform_gaussians(gs: GaussianSet, r: np.ndarray, t: np.ndarray, s: float) -> GaussianSet:
    """Gaussians carried by X -> s R X + t (means, scales, rotations and SH colours)."""
    r = np.asarray(r, np.float64)
    means = (s * gs.means.astype(np.float64) @ r.T + t).astype(np.float32)
    # renderers read the 4 stored numbers as (w, x, y, z): turn them by R in that reading
    q = quat_wxyz_multiply(matrix_to_quat_wxyz(r)[None], gs.rotations.astype(np.float64))
    q = quat_positive_w(q / np.linalg.norm(q, axis=-1, keepdims=True))
    harm = gs.harmonics
    if gs.sh_degree > 0 and not np.allclose(r, np.eye(3)):
        from .model.gaussians import rotate_sh

        harm = rotate_sh(torch.from_numpy(harm), torch.from_numpy(r.astype(np.float32))).numpy()
    return GaussianSet(means=means, scales=gs.scales * np.float32(s), rotations=q.astype(np.float32),
                       harmonics=harm, opacities=gs.opacities, view=gs.view)


def _select_gaussians(gs: GaussianSet, keep: np.ndarray) -> GaussianSet:
    return GaussianSet(gs.means[keep], gs.scales[keep], gs.rotations[keep], gs.harmonics[keep],
                       gs.opacities[keep], None if gs.view is None else gs.view[keep])


# --------------------------------------------------------------------------- one pass


@dataclass
class _Pass:
    depth: np.ndarray
    conf: Optional[np.ndarray]
    extrinsics: np.ndarray  # (n, 3, 4)
    intrinsics: np.ndarray
    sky: Optional[np.ndarray]
    gaussians: Optional[GaussianSet]
    is_metric: bool


def _default_intrinsics(n: int, h: int, w: int) -> np.ndarray:
    """Cameras for models that predict none: 60 degrees across the longer side, centred."""
    f = max(h, w) / (2.0 * math.tan(math.radians(30.0)))
    k = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    return np.tile(k, (n, 1, 1))


def _run_pass(model, pixels: np.ndarray, input_w2c: Optional[np.ndarray], input_k: Optional[np.ndarray],
              *, ref_view_strategy: str, use_ray_pose: bool, infer_gs: bool,
              align_to_input_ext_scale: bool, view_offset: int) -> _Pass:
    net = model.net
    device = model.device
    n, h, w = pixels.shape[:3]
    images = normalize(pixels)[None].to(device)
    ext_t = k_t = None
    if input_w2c is not None:
        ext_t = normalize_extrinsics(torch.from_numpy(conv.as_4x4(input_w2c)).float()[None].to(device))
        k_t = torch.from_numpy(np.asarray(input_k)).float()[None].to(device)
    with torch.inference_mode():
        out = net(images, ext_t, k_t, use_ray_pose=use_ray_pose, infer_gs=infer_gs,
                  ref_view_strategy=ref_view_strategy)
    depth = out.depth[0].float().cpu().numpy()
    conf = None if out.depth_conf is None else out.depth_conf[0].float().cpu().numpy()
    sky = None if out.sky is None else (out.sky[0].float().cpu().numpy() >= SKY_THRESHOLD)
    if out.extrinsics is not None:
        ext = out.extrinsics[0].double().cpu().numpy()[:, :3, :]
        k = out.intrinsics[0].double().cpu().numpy()
    else:
        ext = np.tile(np.eye(4)[:3], (n, 1, 1))
        k = _default_intrinsics(n, h, w)

    gaussians = None
    if out.gaussians is not None:
        g = out.gaussians
        gaussians = GaussianSet(
            means=g.means[0].float().cpu().numpy(), scales=g.scales[0].float().cpu().numpy(),
            rotations=g.rotations[0].float().cpu().numpy(), harmonics=g.harmonics[0].float().cpu().numpy(),
            opacities=g.opacities[0].float().cpu().numpy(),
            view=np.repeat(np.arange(n, dtype=np.int32) + view_offset, h * w),
        )
        # the adapter's frame: the predicted one with translations times frame_scale, and
        # (nested model) before the metric scaling of depth and poses
        factor = float(out.scale_factor or 1.0)
        if g.frame_scale is not None:
            factor /= float(g.frame_scale[0])
        if factor != 1.0:
            gaussians = transform_gaussians(gaussians, np.eye(3), np.zeros(3), factor)

    if input_w2c is not None:
        r, t, s = align_input_poses(ext, input_w2c)
        k = np.asarray(input_k, np.float64)
        if align_to_input_ext_scale:
            # into the given poses' frame: X_in = R^T (X_pred - t) / s
            ext = conv.as_4x4(input_w2c)[:, :3, :].astype(np.float64)
            depth = depth / np.float32(s)
            if gaussians is not None:
                gaussians = transform_gaussians(gaussians, r.T, -(r.T @ t) / s, 1.0 / s)
        else:
            # the given poses carried into the prediction's frame
            ext = apply_sim3_to_w2c(input_w2c, r, t, s)
    return _Pass(depth=depth, conf=conf, extrinsics=ext, intrinsics=k, sky=sky, gaussians=gaussians,
                 is_metric=bool(out.is_metric))


# --------------------------------------------------------------------------- chunks


def default_max_views(model, h: int, w: int) -> int:
    """Views per network pass that fit comfortably in the device's free memory.

    A heuristic from measured peaks (CPU, float32): about 60 MB per 504x378 view for the
    small model, growing with the backbone width; capped at 256 views.
    """
    width = getattr(getattr(model.config, "backbone", None), "embed_dim", None)
    if width is None:  # nested: the giant branch dominates
        width = 1536
    per_view = 0.06e9 * (width / 384) ** 1.5 * (h * w) / (504 * 378)
    device = model.device
    free = None
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if not free:
        return 64
    return int(max(4, min(256, 0.5 * free / per_view)))


def chunk_ranges(n: int, size: int, overlap: int) -> List[range]:
    """Overlapping windows covering 0..n-1; consecutive windows share ``overlap`` views."""
    if n <= size:
        return [range(n)]
    step = size - overlap
    starts = list(range(0, n - size, step)) + [n - size]
    return [range(s, s + size) for s in starts]


def _dense_sim3(src_pts: np.ndarray, dst_pts: np.ndarray, weight_ok: np.ndarray, max_points: int = 20000):
    """Sim(3) from matching dense points (src -> dst), using the pixels where ``weight_ok``."""
    src, dst = src_pts[weight_ok], dst_pts[weight_ok]
    if src.shape[0] < 3:
        raise UserInputError("chunk alignment: too few reliable shared pixels between overlapping chunks; "
                         "raise the overlap or max_views_per_pass")
    if src.shape[0] > max_points:
        pick = np.random.default_rng(0).choice(src.shape[0], max_points, replace=False)
        src, dst = src[pick], dst[pick]
    return umeyama(src, dst)


# --------------------------------------------------------------------------- public


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


def reconstruct(
    model,
    images,
    options: Optional[ReconstructOptions] = None,
    *,
    extrinsics: Optional[np.ndarray] = None,
    intrinsics: Optional[np.ndarray] = None,
    fps: Optional[float] = 2.0,
    progress: Optional[ProgressFn] = None,
    **option_values,
) -> Reconstruction:
    """Run DA3 on photos; see :meth:`DA3Model.reconstruct` for the arguments.

    ``options`` is a :class:`ReconstructOptions`; keywords named like its fields override it."""
    opts = resolve_options(options, option_values)
    if opts.precision is not None and resolve_precision(opts.precision) != _backbone_dtype(model):
        with backbone_precision(model, opts.precision):
            return reconstruct(model, images, opts.replace(precision=None), extrinsics=extrinsics,
                               intrinsics=intrinsics, fps=fps, progress=progress)
    report = progress or (lambda ev: None)
    process_res, process_res_method = opts.process_res, opts.process_res_method
    ref_view_strategy, use_ray_pose, infer_gs = opts.ref_view_strategy, opts.use_ray_pose, opts.infer_gs
    align_to_input_ext_scale, seed = opts.align_to_input_ext_scale, opts.seed
    if infer_gs and not model.has_gaussians:
        raise OptionError(f"infer_gs: {model.preset} has no Gaussian head (use da3-giant or da3nested-giant-large)")
    if use_ray_pose and not model.predicts_cameras:
        raise OptionError(f"use_ray_pose: {model.preset} predicts no cameras")

    report(ProgressEvent("load", 0, 1, "reading images"))
    loaded: List[LoadedImage] = images if _is_loaded(images) else load_images(images, fps=fps)
    n = len(loaded)
    report(ProgressEvent("load", 1, 1, f"{n} images"))

    ext_in = k_in = None
    if extrinsics is not None or intrinsics is not None:
        if extrinsics is not None and intrinsics is None:
            raise UserInputError("extrinsics: known poses need intrinsics too (pass both)")
        if intrinsics is not None:
            k_in = np.asarray(intrinsics, np.float64)
            if k_in.shape == (3, 3):
                k_in = np.tile(k_in, (n, 1, 1))
            if k_in.shape != (n, 3, 3):
                raise UserInputError(f"intrinsics: expected ({n}, 3, 3) for {n} images, got {k_in.shape}")
        if extrinsics is not None:
            ext_in = np.asarray(extrinsics, np.float64)
            if ext_in.shape not in ((n, 3, 4), (n, 4, 4)):
                raise UserInputError(f"extrinsics: expected ({n}, 4, 4) or ({n}, 3, 4) for {n} images, got {ext_in.shape}")
            if not np.all(np.isfinite(ext_in)) or not np.all(np.isfinite(k_in)):
                raise UserInputError("extrinsics/intrinsics: values must be finite")
            ext_in = conv.as_4x4(ext_in)
            if not model.predicts_cameras:
                raise UserInputError(f"extrinsics: {model.preset} cannot be conditioned on poses")
        else:
            warnings.warn("intrinsics without extrinsics are not used: DA3 conditions on known "
                          "cameras only when both are given", stacklevel=3)

    report(ProgressEvent("preprocess", 0, n, "resizing"))
    pixels, transforms = process_images([im.pixels for im in loaded], process_res, process_res_method,
                                        [im.source or im.name for im in loaded])
    report(ProgressEvent("preprocess", n, n, f"{pixels.shape[2]}x{pixels.shape[1]}"))
    h, w = pixels.shape[1:3]
    k_proc = transform_intrinsics(k_in, transforms) if k_in is not None else None
    poses_used = ext_in is not None

    size = opts.max_views_per_pass or default_max_views(model, h, w)
    if size < 2 and n > 1:
        raise OptionError(f"max_views_per_pass: expected at least 2, got {size}")
    overlap = opts.chunk_overlap if opts.chunk_overlap is not None else max(2, min(8, size // 4))
    if n > size and not 1 <= overlap < size:
        raise OptionError(f"chunk_overlap: expected 1 .. {size - 1}, got {overlap}")
    chunks = chunk_ranges(n, size, overlap)

    rng_ctx = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng_ctx:
        if seed is not None:
            torch.manual_seed(seed)
        depth = np.zeros((n, h, w), np.float32)
        conf = None
        sky = None
        ext = np.zeros((n, 3, 4))
        kk = np.zeros((n, 3, 3))
        gs_parts: List[GaussianSet] = []
        placed = np.zeros(n, bool)
        is_metric = False
        report(ProgressEvent("infer", 0, n, f"{len(chunks)} pass(es)"))
        for ci, idx in enumerate(chunks):
            idx = np.asarray(idx)
            res = _run_pass(model, pixels[idx], None if ext_in is None else ext_in[idx],
                            None if k_proc is None else k_proc[idx], ref_view_strategy=ref_view_strategy,
                            use_ray_pose=use_ray_pose, infer_gs=infer_gs,
                            align_to_input_ext_scale=align_to_input_ext_scale, view_offset=int(idx[0]))
            is_metric = res.is_metric
            shared = placed[idx]
            if ci > 0 and not poses_used and model.predicts_cameras:
                # place this chunk onto the views already placed, by their dense points
                report(ProgressEvent("align", ci, len(chunks) - 1, "aligning overlapping chunks"))
                src = depth_to_points(res.depth[shared], res.intrinsics[shared], res.extrinsics[shared])
                dst = depth_to_points(depth[idx[shared]], kk[idx[shared]], ext[idx[shared]])
                ok = np.isfinite(src).all(-1) & np.isfinite(dst).all(-1) & (res.depth[shared] > 0)
                if res.conf is not None:
                    c_new, c_old = res.conf[shared], conf[idx[shared]]
                    ok &= (c_new >= np.median(c_new)) & (c_old >= np.median(c_old))
                r, t, s = _dense_sim3(src, dst, ok)
                res.extrinsics = apply_sim3_to_w2c(res.extrinsics, r, t, s)
                res.depth = res.depth * np.float32(s)
                if res.gaussians is not None:
                    res.gaussians = transform_gaussians(res.gaussians, r, t, s)
            new = ~shared
            depth[idx[new]] = res.depth[new]
            ext[idx[new]] = res.extrinsics[new]
            kk[idx[new]] = res.intrinsics[new]
            if res.conf is not None:
                conf = np.zeros((n, h, w), np.float32) if conf is None else conf
                conf[idx[new]] = res.conf[new]
            if res.sky is not None:
                sky = np.zeros((n, h, w), bool) if sky is None else sky
                sky[idx[new]] = res.sky[new]
            if res.gaussians is not None:
                keep = np.isin(res.gaussians.view, idx[new])
                gs_parts.append(_select_gaussians(res.gaussians, keep))
            placed[idx] = True
            report(ProgressEvent("infer", int(placed.sum()), n, f"pass {ci + 1}/{len(chunks)}"))

    gaussians = None
    if gs_parts:
        gaussians = GaussianSet(*(np.concatenate([getattr(g, f) for g in gs_parts])
                                  for f in ("means", "scales", "rotations", "harmonics", "opacities", "view")))
    scene_options = SceneOptions.of_run(
        opts, max_views_per_pass=size, chunk_overlap=overlap, precision=precision_name(_backbone_dtype(model)),
        camera_source="input" if poses_used else ("predicted" if model.predicts_cameras else "none"),
        passes=len(chunks),
        image_files=tuple(Path(im.source).name if im.source and Path(im.source).is_file() else "" for im in loaded),
    )
    return Reconstruction(
        images=pixels, depth=depth, extrinsics=ext, intrinsics=kk, conf=conf,
        original_sizes=np.array([im.size_hw for im in loaded], np.int64), pixel_transform=transforms,
        image_names=[im.name for im in loaded], sky=sky, gaussians=gaussians, is_metric=is_metric,
        model=model.source or model.preset, options=scene_options,
    )


def _backbone_dtype(model) -> torch.dtype:
    """The compute dtype the model's backbone runs at now (float32 unless set)."""
    return getattr(model.net, "backbone_dtype", None) or torch.float32


def _is_loaded(images) -> bool:
    return isinstance(images, (list, tuple)) and len(images) > 0 and all(isinstance(i, LoadedImage) for i in images)
