"""The ``da3p`` commands that make and export reconstructions: reconstruct, export, demo, info,
blender build.

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
from da3_plugins.runner import (OutputDir, Progress, RunRequest, export_scene, load_model_for,
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

    def get_model(source, precision):
        return load_model_for(source, device=args.device, precision=precision, progress=progress)

    result = run_reconstruct(request, get_model, progress)
    report(result.folder, result.files, progress, result.summary)
    return 0


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
        final = out.commit()
    except BaseException:
        out.discard()
        raise
    seconds = time.time() - start
    report(final, written, progress,
            f"{len(rec)} demo views reconstructed with the embedded da3-tiny at {rec.width}x{rec.height} in {seconds:.1f} s")
    if progress.mode != "json":
        print(f"  camera error against the true cameras: median rotation {np.median(r_err):.1f} deg, "
              f"translation direction {np.median(t_err):.1f} deg (pose AUC@30 {100 * auc['auc30']:.1f})")
        print("  The embedded model is a small demo model trained on synthetic rooms: its depth maps are usable, its "
              "cameras only rough (the views' point clouds line up only loosely; see README, The embedded model).")
        print("  For real photos use an official checkpoint: huggingface-cli download depth-anything/DA3-BASE "
              "--local-dir DA3-BASE, then da3p reconstruct PHOTOS -o OUT --model DA3-BASE")
    return 0
