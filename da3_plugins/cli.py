"""The ``da3p`` command: photos to reconstructions and files for 3D tools.

    da3p reconstruct INPUT... -o OUT [--model ID_OR_DIR] [--export scene,ply,glb,...]
    da3p export SCENE.npz -o OUT --export ply,glb,...
    da3p info MODEL

Exit codes: 0 success, 2 bad input (one line naming the file or argument), 1 internal error.
Output folders are assembled under a temporary name and renamed at the end, so a failed or
interrupted run leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Sequence

DEFAULT_MODEL = "depth-anything/DA3NESTED-GIANT-LARGE-1.1"
EXPORT_FORMATS = ("scene", "ply", "gs-ply", "gs-video", "glb", "colmap", "nerfstudio", "depth")
DEFAULT_EXPORTS = "scene,ply,glb,depth"


class UsageError(Exception):
    """Bad input: exit code 2 with a one-line message."""


# --------------------------------------------------------------------------- progress


class Progress:
    """Progress for people (tqdm bars on stderr), for programs (JSON lines on stdout) or none."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._bars: Dict[str, object] = {}

    def emit(self, event: str, **fields) -> None:
        if self.mode == "json":
            print(json.dumps({"event": event, **fields}), flush=True)

    def __call__(self, ev) -> None:  # a core ProgressEvent
        self.update(ev.stage, ev.done, ev.total, ev.message)

    def update(self, stage: str, done: int, total: int, message: str = "") -> None:
        if self.mode == "json":
            self.emit("progress", stage=stage, done=done, total=total, message=message)
        elif self.mode == "bar":
            bar = self._bars.get(stage)
            if bar is None:
                try:
                    from tqdm import tqdm
                except ImportError:  # pragma: no cover - tqdm is a dependency
                    print(f"{stage}: {done}/{total} {message}", file=sys.stderr)
                    return
                bar = self._bars[stage] = tqdm(total=total, desc=f"{stage:>10}", unit="", leave=True,
                                              file=sys.stderr, dynamic_ncols=True)
            bar.total = total
            bar.n = done
            if message:
                bar.set_postfix_str(message, refresh=False)
            bar.refresh()
            if done >= total:
                bar.close()
                self._bars.pop(stage, None)

    def info(self, text: str) -> None:
        if self.mode == "json":
            self.emit("info", message=text)
        elif self.mode == "bar":
            print(text, file=sys.stderr)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


# --------------------------------------------------------------------------- helpers


def _parse_exports(text: str, rec=None) -> List[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError("--export: give at least one format")
    for t in items:
        if t not in EXPORT_FORMATS:
            raise UsageError(f"--export: unknown format {t!r}; choose from {', '.join(EXPORT_FORMATS)}")
    return list(dict.fromkeys(items))


def _load_matrix_file(path: str, what: str, key: str):
    """A (N, r, c) array from .npy, .npz (key or the only array), .json ({key: ...} or a list) or .txt."""
    import numpy as np

    p = Path(path)
    flag = f"--{what}"
    if not p.is_file():
        raise UsageError(f"{flag} {path}: no such file")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = z.files
                name = key if key in names else (names[0] if len(names) == 1 else None)
                if name is None:
                    raise UsageError(f"{flag} {path}: expected an array named {key!r} (found {', '.join(names)})")
                arr = z[name]
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
            arr = np.asarray(data[key] if isinstance(data, dict) else data, dtype=np.float64)
        else:
            arr = np.loadtxt(p, dtype=np.float64)
    except UsageError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise UsageError(f"{flag} {path}: cannot read a matrix file ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr, dtype=np.float64)
    return arr


def _read_cameras(args, n: int):
    import numpy as np

    ext = k = None
    if args.poses and not args.intrinsics:
        raise UsageError("--poses: known poses need --intrinsics too")
    if args.intrinsics:
        k = _load_matrix_file(args.intrinsics, "intrinsics", "intrinsics")
        if k.shape == (3, 3):
            k = np.tile(k, (n, 1, 1))
        elif k.ndim == 2 and k.shape[1] == 9:
            k = k.reshape(-1, 3, 3)
        if k.shape != (n, 3, 3):
            raise UsageError(f"--intrinsics {args.intrinsics}: expected {n} 3x3 matrices for {n} images, got shape {k.shape}")
    if args.poses:
        ext = _load_matrix_file(args.poses, "poses", "extrinsics")
        if ext.ndim == 2 and ext.shape[1] in (12, 16):
            ext = ext.reshape(-1, ext.shape[1] // 4, 4)
        if ext.shape not in ((n, 4, 4), (n, 3, 4)):
            raise UsageError(f"--poses {args.poses}: expected {n} world-to-camera 4x4 or 3x4 matrices for "
                             f"{n} images, got shape {ext.shape}")
    return ext, k


class OutputDir:
    """An output folder built under a temporary name beside it and renamed on success."""

    def __init__(self, target: str, overwrite: bool) -> None:
        self.target = Path(target).expanduser()
        if self.target.exists():
            if not self.target.is_dir():
                raise UsageError(f"-o {target}: exists and is not a folder")
            if any(self.target.iterdir()) and not overwrite:
                raise UsageError(f"-o {target}: the folder exists and is not empty (add --overwrite to replace it)")
        parent = self.target.parent if str(self.target.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"-o {target}: cannot create the folder {parent} ({exc.strerror})") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"-o {target}: the folder {parent} is not writable")
        from da3_plugins.core.reconstruction import atomic_folder

        self._folder = atomic_folder(self.target, overwrite=True)
        try:
            self.tmp = self._folder.__enter__()
        except OSError as exc:
            raise UsageError(f"-o {target}: cannot write in {parent} ({exc.strerror})") from None

    def commit(self) -> Path:
        self._folder.__exit__(None, None, None)
        return self.target

    def discard(self) -> None:
        self._folder.__exit__(RuntimeError, RuntimeError("discarded"), None)

    def write(self, rec, formats, conf_threshold, progress: "Progress"):
        """Write the exports into the temporary folder and rename it; -> (folder, written)."""
        try:
            written = write_exports(rec, self.tmp, formats, conf_threshold=conf_threshold, progress=progress)
            return self.commit(), written
        except BaseException:
            self.discard()
            raise


def write_exports(rec, folder: Path, formats: Sequence[str], *, conf_threshold, progress: Progress) -> Dict[str, str]:
    """Write each format into ``folder``; returns {format: path} (relative names)."""
    from da3_plugins.core import export as ex

    written: Dict[str, str] = {}
    total = len(formats)
    for i, fmt in enumerate(formats):
        progress.update("export", i, total, fmt)
        if fmt == "scene":
            path = rec.save(folder / "scene.npz")
        elif fmt == "ply":
            path = ex.write_point_ply(folder / "points.ply", rec, conf_threshold=conf_threshold)
        elif fmt == "gs-ply":
            if rec.gaussians is None:
                raise UsageError("--export gs-ply: the reconstruction has no Gaussians "
                                 "(use --gaussians with a model that has a Gaussian head: da3-giant, da3nested-giant-large)")
            path = ex.write_gaussian_ply(folder / "gaussians.ply", rec)
        elif fmt == "gs-video":
            if rec.gaussians is None:
                raise UsageError("--export gs-video: the reconstruction has no Gaussians "
                                 "(use --gaussians with a model that has a Gaussian head: da3-giant, da3nested-giant-large)")
            path = ex.write_gaussian_video(folder / "gaussians.mp4", rec,
                                           progress=lambda d, t: progress.update("video", d, t, "rendering"))
        elif fmt == "glb":
            path = ex.write_glb(folder / "scene.glb", rec, conf_threshold=conf_threshold)
        elif fmt == "colmap":
            path = ex.write_colmap(folder / "colmap" / "sparse" / "0", rec, conf_threshold=conf_threshold)
        elif fmt == "nerfstudio":
            path = ex.write_nerfstudio(folder / "nerfstudio", rec)
        elif fmt == "depth":
            path = ex.write_depth_images(folder / "depth", rec)
        else:  # pragma: no cover - validated before
            raise UsageError(f"--export: unknown format {fmt!r}")
        written[fmt] = str(Path(path).relative_to(folder))
    progress.update("export", total, total, "done")
    return written


OPEN_WITH = {
    "scene": "da3p export, the Blender add-on (File > Import > DA3 Reconstruction) or Reconstruction.load",
    "ply": "MeshLab, CloudCompare, Blender, Open3D",
    "gs-ply": "a Gaussian-splat viewer (SuperSplat, gsplat, nerfstudio)",
    "gs-video": "any video player",
    "glb": "any glTF viewer, Blender (File > Import > glTF), a web browser via gltf-viewer",
    "colmap": "COLMAP GUI, pycolmap, gsplat/nerfstudio trainers (ns-process-data skip)",
    "nerfstudio": "ns-train splatfacto --data <folder>",
    "depth": "any image viewer (colour maps) or tools reading 16-bit PNG",
}


# --------------------------------------------------------------------------- commands


def _resolve_model_source(name: Optional[str]) -> str:
    return name or DEFAULT_MODEL


def _load(args, progress: Progress):
    from da3_plugins.core import load_model

    source = _resolve_model_source(args.model)
    progress.update("model", 0, 1, source)
    try:
        model = load_model(source, device=args.device, dtype=args.dtype)
    except (FileNotFoundError, RuntimeError, ImportError, ValueError) as exc:
        hint = ""
        if args.model is None:
            hint = (" (no --model given: the default is the official "
                    f"{DEFAULT_MODEL}; pass --model with a local model folder)")
        text = str(exc) if source in str(exc) else f"{source}: {exc}"
        raise UsageError(f"--model {text}{hint}") from None
    progress.update("model", 1, 1, f"{model.preset} on {model.device}")
    return model


def cmd_reconstruct(args, progress: Progress) -> int:
    from da3_plugins.core.images import ImageInputError, load_images

    formats = _parse_exports(args.export)
    for fmt in ("gs-ply", "gs-video"):
        if fmt in formats and not args.gaussians:
            raise UsageError(f"--export {fmt} needs --gaussians")
    out = OutputDir(args.output, args.overwrite)
    try:
        try:
            images = load_images(args.inputs, fps=args.fps)
        except ImageInputError as exc:
            raise UsageError(str(exc)) from None
        ext, k = _read_cameras(args, len(images))
        model = _load(args, progress)
        start = time.time()
        try:
            rec = model.reconstruct(
                images, extrinsics=ext, intrinsics=k, process_res=args.process_res,
                process_res_method=args.process_res_method, ref_view_strategy=args.ref_view,
                use_ray_pose=args.ray_pose, infer_gs=args.gaussians, max_views_per_pass=args.max_views,
                progress=progress,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        seconds = time.time() - start
    except BaseException:
        out.discard()
        raise
    final, written = out.write(rec, formats, args.conf_threshold, progress)
    _report(final, written, progress, f"{len(rec)} views at {rec.width}x{rec.height} in {seconds:.1f} s")
    return 0


def cmd_export(args, progress: Progress) -> int:
    from da3_plugins.core.reconstruction import Reconstruction, SceneFileError

    formats = _parse_exports(args.export)
    try:
        rec = Reconstruction.load(args.scene)
    except SceneFileError as exc:
        raise UsageError(str(exc)) from None
    final, written = OutputDir(args.output, args.overwrite).write(rec, formats, args.conf_threshold, progress)
    _report(final, written, progress, f"{len(rec)} views")
    return 0


def _report(folder: Path, written: Dict[str, str], progress: Progress, summary: str) -> None:
    if progress.mode == "json":
        progress.emit("done", output=str(folder), files={k: str(folder / v) for k, v in written.items()},
                      summary=summary)
        return
    print(f"Done: {summary}. Wrote {folder}/")
    for fmt, rel in written.items():
        print(f"  {rel:<28} open with {OPEN_WITH[fmt]}")


def cmd_info(args, progress: Progress) -> int:
    import torch

    from da3_plugins.core.config import CHECKPOINT_LICENSES, HUB_REPOS, PRESETS, NestedConfig, get_preset

    name = args.model
    preset = HUB_REPOS.get(name) or (name if name in PRESETS else None)
    source = "preset"
    model = None
    if preset is None:
        model = _load(argparse.Namespace(model=name, device="cpu", dtype=None), Progress("none"))
        preset, source = model.preset, model.source
    cfg = get_preset(preset)
    if model is None:
        from da3_plugins.core.network import build_network

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
    from da3_plugins.blender_build import build_extension

    try:
        path = build_extension(args.output)
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"Built {path}. Install it in Blender: Edit > Preferences > Get Extensions > Install from Disk.")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="da3p", description="Depth Anything 3: photos to depth, cameras, point clouds and splats.")
    sub = p.add_subparsers(dest="command", required=True)

    def common_out(sp):
        sp.add_argument("-o", "--output", required=True, help="output folder (created; see --overwrite)")
        sp.add_argument("--export", default=DEFAULT_EXPORTS,
                        help=f"comma-separated formats: {', '.join(EXPORT_FORMATS)} (default {DEFAULT_EXPORTS})")
        sp.add_argument("--conf-threshold", type=_conf_threshold, default="auto",
                        help="keep points with confidence >= this; 'auto' (default) uses the official "
                             "percentile rule, 0 keeps all")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
        sp.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress bars (default), JSON lines on stdout for programs, or none")

    r = sub.add_parser("reconstruct", help="reconstruct photos, a folder or a video")
    r.add_argument("inputs", nargs="+", help="image files, folders of images, or videos")
    common_out(r)
    r.add_argument("--model", default=None,
                   help=f"model folder, .safetensors file or hub repo id (default {DEFAULT_MODEL})")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    r.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"),
                   help="backbone compute precision (default fp32: exact)")
    r.add_argument("--process-res", type=int, default=504)
    r.add_argument("--process-res-method", default="upper_bound_resize",
                   choices=("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop"))
    r.add_argument("--ref-view", default="saddle_balanced",
                   choices=("first", "middle", "saddle_balanced", "saddle_sim_range"))
    r.add_argument("--ray-pose", action="store_true", help="cameras from the ray map instead of the camera head")
    r.add_argument("--gaussians", action="store_true", help="also predict 3D Gaussians (giant / nested models)")
    r.add_argument("--intrinsics", help="known intrinsics of the original photos: .npy/.npz/.json/.txt, (N,3,3) or one 3x3")
    r.add_argument("--poses", help="known OpenCV world-to-camera poses: .npy/.npz/.json/.txt, (N,4,4) or (N,3,4)")
    r.add_argument("--fps", type=float, default=2.0, help="frames per second sampled from videos (default 2)")
    r.add_argument("--max-views", type=int, default=None,
                   help="views per network pass; more run in overlapping chunks (default: from memory)")
    r.set_defaults(func=cmd_reconstruct)

    e = sub.add_parser("export", help="write files from a saved scene (.npz)")
    e.add_argument("scene", help="a scene file written by da3p reconstruct (scene.npz)")
    common_out(e)
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="what a model is and can do")
    i.add_argument("model", help="preset name, hub repo id, model folder or .safetensors file")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info, progress="none")

    wk = sub.add_parser("worker", help="serve requests as JSON lines on stdin/stdout, keeping models loaded",
                        add_help=False)
    wk.add_argument("rest", nargs=argparse.REMAINDER)

    b = sub.add_parser("blender", help="the Blender extension")
    bsub = b.add_subparsers(dest="blender_command", required=True)
    bb = bsub.add_parser("build", help="build the installable extension .zip")
    bb.add_argument("-o", "--output", default="dist", help="folder for the zip (default dist/)")
    bb.set_defaults(func=cmd_blender_build, progress="none")
    return p


def _conf_threshold(text: str):
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


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
    progress = Progress(getattr(args, "progress", "none"))
    try:
        return args.func(args, progress)
    except UsageError as exc:
        progress.close()
        if progress.mode == "json":
            progress.emit("error", message=str(exc), code=2)
        print(f"da3p: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("da3p: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: say so, with the traceback for a report
        progress.close()
        if progress.mode == "json":
            progress.emit("error", message=f"{type(exc).__name__}: {exc}", code=1)
        traceback.print_exc()
        print(f"da3p: internal error: {type(exc).__name__}: {exc} (please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
