"""The ``da3p`` commands that make and export reconstructions: reconstruct, batch, export, demo,
info, blender build.

Each command takes the parsed arguments and a progress sink and returns the exit code; bad input
raises :class:`~da3_plugins.core.errors.UserInputError`, which ``da3p`` turns into one line and
exit code 2.  The work itself is :mod:`da3_plugins.runner`'s, shared with the worker.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict

from da3_plugins.core.errors import UserInputError, first_line
from da3_plugins.core.export.registry import EXPORTS, write_exports
from da3_plugins.core.options import ReconstructOptions
from da3_plugins.runner import (ModelCache, ModelLoader, OutputDir, Progress, RunRequest, export_scene, load_model_for,
                                run_reconstruct)

DEMO_EXPORTS = ("scene", "ply", "glb", "colmap", "depth", "preview")
"""What ``da3p demo`` writes."""


def options_from_args(args) -> ReconstructOptions:
    """The :class:`ReconstructOptions` of parsed arguments: every option field that has a flag
    and was given (the parser leaves the others at None)."""
    given = {f.name: getattr(args, f.name) for f in ReconstructOptions.option_fields()
             if f.metadata.get("flag") and getattr(args, f.name, None) is not None}
    return ReconstructOptions(**given)


def cmd_reconstruct(args, progress: Progress) -> int:
    """``da3p reconstruct INPUT... -o OUT``: photos to an output folder of exports."""
    request = RunRequest(inputs=tuple(args.inputs), output=args.output, model=args.model, exports=args.export,
                         options=options_from_args(args), poses=args.poses, intrinsics=args.intrinsics,
                         fps=args.fps, conf_threshold=args.conf_threshold, overwrite=args.overwrite)

    get_model = ModelCache(lambda source, precision: load_model_for(source, device=args.device, precision=precision,
                                                                    progress=progress))

    if args.ray is None:
        result = run_reconstruct(request, get_model, progress)
    else:
        from da3_plugins.ray_backend import RayChunkPool, check_address, ray_session

        spec = worker_spec(args)
        address = check_address(args.ray or None)
        get_model(request.model, request.options.precision)  # a bad --model: one line, before any worker
        with ray_session(address, info=progress.info):
            pool = RayChunkPool(request.model, request.options.precision, spec, loader=ModelLoader(args.device))
            progress.info(f"Ray: {pool.workers} worker(s) hold the model; the passes run there")
            result = run_reconstruct(request, get_model, progress, pool=pool)
    report(result.folder, result.files, progress, result.summary)
    return 0


def worker_spec(args):
    """The :class:`~da3_plugins.ray_backend.WorkerSpec` of ``--workers`` and the per-worker flags."""
    from da3_plugins.ray_backend import WorkerSpec

    return WorkerSpec(workers=args.workers, cpus=args.cpus_per_worker, gpus=args.gpus_per_worker)


def cmd_batch(args, progress: Progress) -> int:
    """``da3p batch ROOT -o OUT``: many scenes, each as ``da3p reconstruct`` writes it."""
    from da3_plugins.batch import BatchSettings, exit_code, find_jobs, format_table, run_batch
    from da3_plugins.core.export.registry import parse_export_list
    from da3_plugins.ray_backend import check_address

    ray = None
    if args.ray is not None:  # the arguments first, then ROOT
        ray = {"address": check_address(args.ray or None), "spec": worker_spec(args)}
    jobs = find_jobs(args.root)
    if args.model is not None:
        from da3_plugins.core.model_source import classify_model_source

        try:
            classify_model_source(args.model)  # embedded, a folder, a file or a hub id
        except UserInputError as exc:
            raise UserInputError(f"--model {first_line(exc)}") from None
    exports = parse_export_list(args.export)
    options = options_from_args(args)
    RunRequest(inputs=("-",), output=args.output, exports=exports, options=options, fps=args.fps,
               conf_threshold=args.conf_threshold)  # the shared settings' own checks, before any scene
    model = args.model
    if model is not None and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().absolute())  # workers may run in another folder
    settings = BatchSettings(output=str(Path(args.output).expanduser().absolute()), model=model, exports=exports, options=options, fps=args.fps,
                             conf_threshold=args.conf_threshold, overwrite=args.overwrite)
    progress.info(f"{len(jobs)} scene(s) from {args.root} -> {args.output}/" + (" on Ray" if ray else ""))
    start = time.time()
    records = run_batch(jobs, settings, progress, load_model=ModelLoader(args.device), ray=ray)
    seconds = time.time() - start
    code = exit_code(records)
    ok = sum(r.status == "ok" for r in records)
    if progress.mode == "json":
        progress.event("done", output=str(Path(args.output)), scenes=len(records), ok=ok,
                       skipped=sum(r.status == "skipped" for r in records),
                       failed=sum(r.status == "failed" for r in records), seconds=round(seconds, 2), code=code)
    else:
        print(format_table(records))
        rate = f"; {60 * ok / seconds:.1f} scenes per minute" if ok and seconds > 0 else ""
        print(f"Done in {seconds:.1f} s{rate}. Records: {Path(args.output) / 'batch.jsonl'}")
        if code:
            print("Failed scenes left nothing behind; fix them and run the same command again: finished scenes "
                  "are skipped.")
    return code


def cmd_export(args, progress: Progress) -> int:
    """``da3p export SCENE -o OUT``: files for other tools from a saved scene."""
    result = export_scene(args.scene, args.output, args.export, conf_threshold=args.conf_threshold,
                          overwrite=args.overwrite, progress=progress)
    report(result.folder, result.files, progress, f"{result.views} views")
    return 0


def report(folder: Path, written: Dict[str, str], progress: Progress, summary: str) -> None:
    """The closing lines: what was written and what opens each file (a ``done`` event in JSON)."""
    if progress.mode == "json":
        progress.event("done", output=str(folder), files={k: str(folder / v) for k, v in written.items()},
                       summary=summary)
        return
    print(f"Done: {summary}. Wrote {folder}/")
    for name, rel in written.items():
        print(f"  {rel:<28} open with {EXPORTS[name].opens_with}")


def cmd_info(args, progress: Progress) -> int:
    """``da3p info MODEL``: preset, parameters, capabilities, licence."""
    import torch

    from da3_plugins.core.model.config import CHECKPOINT_LICENSES, HUB_REPOS, PRESETS, NestedConfig, get_preset

    name = args.model
    preset = HUB_REPOS.get(name) or (name if name in PRESETS else None)
    source = "preset"
    model = None
    if preset is None:
        model = load_model_for(name, device="cpu")
        preset, source = model.preset, model.source
    cfg = get_preset(preset)
    if model is None:
        from da3_plugins.core.model.network import build_network

        with torch.device("meta"):
            net = build_network(cfg)
    else:
        net = model.net
    # unique parameters (the ray head's shared LayerNorm once), as a published
    # model.safetensors stores them
    params = sum(p.numel() for p in net.parameters())
    nested = isinstance(cfg, NestedConfig)
    anyview = cfg.anyview if nested else cfg
    caps = {
        "depth": True,
        "confidence": anyview.head.kind != "dpt",
        "cameras": bool(getattr(net, "predicts_cameras", False)),
        "pose_conditioning": anyview.head.kind == "dualdpt",
        "ray_pose": anyview.head.kind == "dualdpt",
        "gaussians": bool(getattr(net, "has_gaussians", False)),
        "metric_depth": nested,
        "sky_mask": anyview.head.kind == "dpt",
    }
    info = {"model": name, "preset": preset, "source": source, "parameters": params,
            "licence": CHECKPOINT_LICENSES.get(preset, "unknown"), "capabilities": caps,
            "hub_repos": [r for r, p in HUB_REPOS.items() if p == preset]}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{name}: preset {preset}, {params / 1e6:.1f} M parameters, licence {info['licence']}")
        print("  can: " + ", ".join(k.replace("_", " ") for k, v in caps.items() if v))
        print("  cannot: " + (", ".join(k.replace("_", " ") for k, v in caps.items() if not v) or "-"))
        if info["hub_repos"]:
            print("  weights: " + ", ".join(info["hub_repos"]))
    return 0



def cmd_blender_build(args, progress: Progress) -> int:
    """``da3p blender build``: the installable extension zip."""
    from da3_plugins.blender_build import build_extension

    try:
        path = build_extension(args.output)
    except (FileNotFoundError, ValueError) as exc:
        raise UserInputError(first_line(exc)) from None
    print(f"Built {path}. Install it in Blender: Edit > Preferences > Get Extensions > Install from Disk.")
    return 0


def demo_surface_error(rec, truth: dict, photos):
    """The demo's fused points against its true surface (``core.evaluation.fused_surface_error``),
    or None when ``cameras.json`` names no generator recipe ("synthetic") or the recipe no
    longer renders the bundled photos: the truth is the synthetic scene regenerated from its
    recipe, checked pixel for pixel against the photos."""
    import numpy as np

    from da3_plugins.core.evaluation import fused_surface_error
    from da3_plugins.core.images import load_images
    from da3_plugins.core.points import resolve_conf_threshold
    from da3_plugins.core.synthetic import make_scene

    recipe = truth.get("synthetic")
    if not isinstance(recipe, dict):
        return None
    scene = make_scene(**recipe)
    bundled = np.stack([im.pixels for im in load_images(list(photos))])
    if bundled.shape != scene.images.shape or not np.array_equal(bundled, scene.images):
        return None
    valid = rec.valid_mask(resolve_conf_threshold("auto", rec.conf))
    return fused_surface_error(rec.depth, rec.intrinsics, rec.extrinsics, valid, scene)


def cmd_demo(args, progress: Progress) -> int:
    """``da3p demo``: the bundled example with the embedded model, offline, with a preview picture."""
    import numpy as np

    from da3_plugins.core.images import load_images

    demo = Path(__file__).resolve().parent / "data" / "demo"
    files = sorted(demo.glob("view_*.png"))
    if not files:
        raise UserInputError(f"{demo}: the bundled demo photos are missing (reinstall da3-plugins)")
    start = time.time()
    out = OutputDir(args.output, args.overwrite)
    try:
        model = load_model_for("embedded", device="cpu", progress=progress)
        progress.info(f"{model.preset} (embedded, {sum(p.numel() for p in model.net.parameters()) / 1e6:.1f} M parameters)")
        rec = model.reconstruct(load_images([str(f) for f in files]), process_res=args.process_res, progress=progress)
        written = write_exports(rec, out.tmp, DEMO_EXPORTS, conf_threshold="auto", progress=progress.update)
        truth = json.loads((demo / "cameras.json").read_text())
        gt = np.array([f["w2c"] for f in truth["frames"]], dtype=np.float64)
        from da3_plugins.core.geometry import pose_auc, relative_pose_errors

        r_err, t_err = relative_pose_errors(rec.extrinsics, gt)
        auc = pose_auc(rec.extrinsics, gt, thresholds=(3, 30))
        surface = demo_surface_error(rec, truth, [str(f) for f in files])
        final = out.commit()
    except BaseException:
        out.discard()
        raise
    seconds = time.time() - start
    report(final, written, progress,
            f"{len(rec)} demo views reconstructed with the embedded da3-tiny at {rec.width}x{rec.height} in {seconds:.1f} s")
    if surface is not None:
        progress.event("surface_error", median=surface.median, extent=surface.extent, fraction=surface.fraction)
    if progress.mode != "json":
        print(f"  camera error against the true cameras: median rotation {np.median(r_err):.1f} deg, "
              f"translation direction {np.median(t_err):.1f} deg (pose AUC@30 {100 * auc['auc30']:.1f})")
        if surface is not None:
            print(f"  fused points against the true surface: median distance {100 * surface.fraction:.1f}% of the "
                  f"scene's extent ({surface.median:.3f} of {surface.extent:.2f} units; the points placed by a Sim(3) "
                  f"of the predicted camera centres onto the true ones)")
        print("  The embedded model is a small demo model trained on synthetic rooms: its depth maps are usable, its "
              "cameras only rough (the views' point clouds line up only loosely; see README, The embedded model).")
        print("  For real photos use an official checkpoint: huggingface-cli download depth-anything/DA3-BASE "
              "--local-dir DA3-BASE, then da3p reconstruct PHOTOS -o OUT --model DA3-BASE")
    return 0
