"""The ``da3p`` command line: the parser and the entry point.

    da3p reconstruct INPUT... -o OUT [--model ID_OR_DIR] [--export scene,ply,glb,...] [--ray [ADDRESS]]
    da3p batch ROOT -o OUT [--ray [ADDRESS]]
    da3p export SCENE.npz -o OUT --export ply,glb,...
    da3p demo | info MODEL | train | eval | worker | blender build

The reconstruction options are not listed here: they are the fields of
:class:`~da3_plugins.core.options.ReconstructOptions` that carry a ``flag``, and
:func:`add_option_arguments` turns each into an argument.  The export choices come from the
export registry.  The commands are in :mod:`da3_plugins.commands` (and ``train_commands``).

Exit codes: 0 success, 2 bad input (one line naming the file or argument: every
:class:`~da3_plugins.core.errors.UserInputError`), 1 internal error, 130 interrupted.
Output folders are assembled under a temporary name and renamed at the end, so a failed or
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Optional, Sequence

from da3_plugins import commands, train_commands
from da3_plugins.core.errors import UserInputError, first_line
from da3_plugins.core.export.registry import DEFAULT_EXPORTS, EXPORT_NAMES
from da3_plugins.core.options import ReconstructOptions, option_defaults
from da3_plugins.runner import DEFAULT_MODEL, PROGRESS_MODES, make_progress


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One argument per :class:`ReconstructOptions` field with a ``flag`` (bools are switches).

    Every argument defaults to None, so only what the user gave overrides the options'
    defaults (which the help shows)."""
    defaults = option_defaults()
    for f in ReconstructOptions.option_fields():
        flag = f.metadata.get("flag")
        if not flag:
            continue
        text = f.metadata["help"]
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=text)
            continue
        choices = f.metadata.get("choices")
        kind = str if choices else int
        if "(default" not in text and defaults[f.name] is not None:
            text += f" (default {defaults[f.name]})"
        parser.add_argument(flag, dest=f.name, type=kind, choices=choices, default=None, help=text)


def add_ray_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--ray [ADDRESS]`` and the worker shape."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help=f"{what}. Without ADDRESS: RAY_ADDRESS when set, else a local Ray instance "
                             "(started and stopped again); with one (HOST:PORT, ray://HOST:PORT, auto): join "
                             "that cluster")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --ray: how many workers (default: as the cluster's CPUs/GPUs allow)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="with --ray: CPUs per worker (default 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="with --ray: GPUs per worker, a fraction shares one (default 0: CPU workers)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="da3p", description="Depth Anything 3: photos to depth, cameras, point clouds and splats.")
    sub = p.add_subparsers(dest="command", required=True)

    def common_out(sp):
        sp.add_argument("-o", "--output", required=True, help="output folder (created; see --overwrite)")
        sp.add_argument("--export", default=",".join(DEFAULT_EXPORTS),
                        help=f"comma-separated formats: {', '.join(EXPORT_NAMES)} (default {','.join(DEFAULT_EXPORTS)})")
        sp.add_argument("--conf-threshold", type=_conf_threshold, default="auto",
                        help="keep points with confidence >= this; 'auto' (default) uses the official "
                             "percentile rule, 0 keeps all")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
        sp.add_argument("--progress", choices=PROGRESS_MODES, default="bar",
                        help="progress bars (default), JSON lines on stdout for programs, or none")

    r = sub.add_parser("reconstruct", help="reconstruct photos, a folder or a video")
    r.add_argument("inputs", nargs="+", help="image files, folders of images, or videos")
    common_out(r)
    r.add_argument("--model", default=None,
                   help=f"model folder, .safetensors file, hub repo id or 'embedded' (default {DEFAULT_MODEL})")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    add_option_arguments(r)
    r.add_argument("--intrinsics", help="known intrinsics of the original photos: .npy/.npz/.json/.txt, (N,3,3) or one 3x3")
    r.add_argument("--poses", help="known OpenCV world-to-camera poses: .npy/.npz/.json/.txt, (N,4,4) or (N,3,4)")
    r.add_argument("--fps", type=float, default=2.0, help="frames per second sampled from videos (default 2)")
    add_ray_arguments(r, "run the network passes of a long input on Ray workers that hold the model; the "
                         "joining stays here (same result as without)")
    r.set_defaults(func=commands.cmd_reconstruct)

    bt = sub.add_parser("batch", help="reconstruct many scenes (one folder or video each), optionally on Ray")
    bt.add_argument("root", help="a folder holding one folder (or video) per scene, or a manifest file: one path "
                    "per line, or JSON lines with path, name, poses, intrinsics, fps, options")
    common_out(bt)
    bt.add_argument("--model", default=None,
                    help=f"model folder, .safetensors file, hub repo id or 'embedded' (default {DEFAULT_MODEL})")
    bt.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    add_option_arguments(bt)
    bt.add_argument("--fps", type=float, default=2.0, help="frames per second sampled from videos (default 2)")
    add_ray_arguments(bt, "run the scenes on Ray workers that each load the model once")
    bt.set_defaults(func=commands.cmd_batch)

    e = sub.add_parser("export", help="write files from a saved scene (.npz)")
    e.add_argument("scene", help="a scene file written by da3p reconstruct (scene.npz)")
    common_out(e)
    e.set_defaults(func=commands.cmd_export)

    t = sub.add_parser("train", help="train or fine-tune a model (synthetic scenes or your own data)")
    t.add_argument("-o", "--output", required=True, help="run folder: checkpoints (config.json + model.safetensors), "
                   "optimizer state and train_log.jsonl")
    t.add_argument("--preset", default="da3-tiny", help="architecture to train from scratch (default da3-tiny)")
    t.add_argument("--init", default=None, help="checkpoint to fine-tune from: model folder, .safetensors, hub id or 'embedded'")
    t.add_argument("--data", default=None, help="folder of your scenes (docs/training-data.md); default: synthetic scenes")
    t.add_argument("--teacher", default=None, help="with --data: a model whose depth, aligned to your sparse/noisy "
                   "depth by RANSAC, becomes the dense label (teacher-student pseudo-labels)")
    t.add_argument("--freeze-backbone", action="store_true", help="train only the heads and camera modules")
    t.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2500)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="scenes per step and process (default 4; under torchrun the global batch is processes x this)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-4)")
    t.add_argument("--backbone-lr-scale", type=float, default=1.0, help="backbone learning-rate factor (e.g. 0.1 to fine-tune)")
    t.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 100)")
    t.add_argument("--views", type=_views, default=None, help="views per sample, MIN-MAX (default 2-4)")
    t.add_argument("--size", type=_size, default=None, help="training image size HEIGHTxWIDTH (default 126x168)")
    t.add_argument("--scenes", type=int, default=None, help="synthetic scenes in the pool (default 320)")
    t.add_argument("--pose-condition", type=float, default=None, help="fraction of steps conditioned on true cameras (default 0.2)")
    t.add_argument("--camera-weight", type=float, default=None, help="weight of the camera loss (default 1)")
    t.add_argument("--correspondence", type=float, default=None,
                   help="weight of the attention-matching aid (default 0: off): one head per cross-view block is "
                   "taught which patch of the first view sees the same surface")
    t.add_argument("--view-gap", type=int, default=None,
                   help="synthetic samples are runs of views at most this many camera positions apart (default 0: any)")
    t.add_argument("--generator", choices=("rooms", "randomized"), default="rooms",
                   help="synthetic scenes: rooms (one look, 126x168; default) or randomized (domain-randomised "
                   "layouts, materials, lighting, field of view 40-100 degrees, photometry; see --sizes)")
    t.add_argument("--sizes", type=_sizes, default=None,
                   help="randomized: sizes HxW,HxW,... of which each step takes one at random (several "
                   "resolutions and aspect ratios; default: --size)")
    t.add_argument("--max-tokens", type=int, default=None,
                   help="randomized: patch tokens per step and process (views x H/14 x W/14); larger sizes take "
                   "fewer views and samples (default 0: no limit)")
    t.add_argument("--seed", type=int, default=0, help="seeds weights, batches and everything random (default 0)")
    t.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic scene pool (default 0)")
    t.add_argument("--save-every", type=int, default=None, help="checkpoint interval in steps (default 250)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in the output folder")
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    t.add_argument("--progress", choices=PROGRESS_MODES, default="bar")
    t.set_defaults(func=train_commands.cmd_train)

    ev = sub.add_parser("eval", help="score a model on held-out scenes next to trivial baselines")
    ev.add_argument("--model", default=None, help="model folder, .safetensors, hub id or 'embedded'")
    ev.add_argument("--data", default=None, help="folder of scenes with depth and cameras (default: synthetic)")
    ev.add_argument("--scenes", type=int, default=24, help="held-out synthetic scenes (default 24)")
    ev.add_argument("--views", type=int, default=4, help="views per synthetic scene (default 4)")
    ev.add_argument("--size", type=_sizes, default=None,
                    help="image size HEIGHTxWIDTH, or several separated by commas (default 126x168)")
    ev.add_argument("--family", choices=("rooms", "randomized", "terrain", "shapes", "all"), default="rooms",
                    help="held-out synthetic scenes: rooms (the rooms generator, unseen seeds; default), randomized "
                    "(the domain-randomised generator, unseen seeds), terrain or shapes (evaluation-only "
                    "generators that training never uses), or all four")
    ev.add_argument("--seed", type=int, default=1000,
                    help="seed of the held-out pool (default 1000; training uses 0); with --family other than rooms, "
                    "the first scene seed (default: the family's own, randomized 1000, terrain 2000, shapes 3000)")
    ev.add_argument("--no-baselines", action="store_true", help="score the model only")
    ev.add_argument("--json", default=None, help="also write the table as JSON to this file")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--progress", choices=PROGRESS_MODES, default="bar")
    ev.set_defaults(func=train_commands.cmd_eval)

    d = sub.add_parser("demo", help="reconstruct the bundled example with the embedded model (offline)")
    d.add_argument("-o", "--output", default="da3-demo", help="output folder (default da3-demo)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    d.add_argument("--process-res", type=int, default=168, help="network input size (default 168, the embedded model's)")
    d.add_argument("--progress", choices=PROGRESS_MODES, default="bar")
    d.set_defaults(func=commands.cmd_demo)

    i = sub.add_parser("info", help="what a model is and can do")
    i.add_argument("model", help="preset name, hub repo id, model folder or .safetensors file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=commands.cmd_info, progress="none")

    wk = sub.add_parser("worker", help="serve requests as JSON lines on stdin/stdout, keeping models loaded",
                        add_help=False)
    wk.add_argument("rest", nargs=argparse.REMAINDER)

    b = sub.add_parser("blender", help="the Blender extension")
    bsub = b.add_subparsers(dest="blender_command", required=True)
    bb = bsub.add_parser("build", help="build the installable extension .zip")
    bb.add_argument("-o", "--output", default="dist", help="folder for the zip (default dist/)")
    bb.set_defaults(func=commands.cmd_blender_build, progress="none")
    return p


def _conf_threshold(text: str):
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 126x168, got {text!r}") from None
    if h <= 0 or w <= 0 or h % 14 or w % 14:
        raise argparse.ArgumentTypeError(f"expected sides that are positive multiples of 14, got {text!r}")
    return h, w


def _sizes(text: str):
    """HxW[,HxW...] -> ((h, w), ...)."""
    return tuple(_size(part) for part in text.split(",") if part.strip())


def _views(text: str):
    try:
        lo, _, hi = text.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX such as 2-4, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from da3_plugins.worker import main as worker_main

        return worker_main(argv[1:])
    if argv[:1] == ["--version"]:
        from da3_plugins import __version__

        print(f"da3p {__version__}")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits with 2 on usage errors
    progress = make_progress(getattr(args, "progress", "none"))
    try:
        return args.func(args, progress)
    except UserInputError as exc:
        progress.close()
        message = first_line(exc)
        progress.event("error", message=message, code=2)
        print(f"da3p: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("da3p: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: one line here, the traceback in a file for the report
        progress.close()
        log = _save_traceback()
        message = f"{type(exc).__name__}: {first_line(exc)}"
        progress.event("error", message=message, code=1, traceback=log)
        print(f"da3p: internal error: {message} (please report it with {log})", file=sys.stderr)
        return 1


def _save_traceback() -> str:
    """Write the current exception's traceback to a temporary file; returns its path."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="da3p-error-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exc(file=fh)
    return path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
