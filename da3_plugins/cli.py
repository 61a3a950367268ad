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
    "preview": "any image viewer (input views, depth maps, a rendered novel view)",
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
            hint = (f" (no --model given, so the official {DEFAULT_MODEL} was tried. Download it on a "
                    f"machine with access: huggingface-cli download {DEFAULT_MODEL} --local-dir DA3_DIR, "
                    "then pass --model DA3_DIR; or use --model embedded, the small offline demo model)")
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


# --------------------------------------------------------------------------- training


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 126x168, got {text!r}") from None
    if h <= 0 or w <= 0 or h % 14 or w % 14:
        raise argparse.ArgumentTypeError(f"expected sides that are positive multiples of 14, got {text!r}")
    return h, w


def _views(text: str):
    try:
        lo, _, hi = text.partition("-")
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX such as 2-4, got {text!r}") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def train_config_from_args(args):
    """The TrainConfig of ``da3p train`` arguments (defaults: the embedded model's recipe)."""
    from da3_plugins.core.losses import LossWeights
    from da3_plugins.core.training import SyntheticDataConfig, TrainConfig

    base = TrainConfig()
    syn = base.synthetic
    h, w = args.size or (syn.height, syn.width)
    lo, hi = args.views or (syn.min_views, syn.max_views)
    try:
        syn = SyntheticDataConfig(height=h, width=w, scenes=args.scenes or syn.scenes,
                                  views_per_scene=max(syn.views_per_scene, hi), min_views=lo, max_views=hi,
                                  seed=args.data_seed,
                                  max_view_gap=syn.max_view_gap if args.view_gap is None else args.view_gap)
        return TrainConfig(
            preset=args.preset, init=args.init, data=args.data, teacher=args.teacher, synthetic=syn, freeze_backbone=args.freeze_backbone,
            steps=args.steps or base.steps, batch_size=args.batch_size or base.batch_size, lr=args.lr or base.lr,
            backbone_lr_scale=args.backbone_lr_scale, warmup=base.warmup if args.warmup is None else args.warmup,
            pose_condition_prob=base.pose_condition_prob if args.pose_condition is None else args.pose_condition,
            save_every=args.save_every or base.save_every, seed=args.seed,
            loss=LossWeights(camera=base.loss.camera if args.camera_weight is None else args.camera_weight,
                             correspondence=(base.loss.correspondence if args.correspondence is None
                                             else args.correspondence)),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_train(args, progress: Progress) -> int:
    import torch

    from da3_plugins.core.training import train

    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such folder")
    if args.init is not None and args.init != "embedded" and not Path(args.init).exists() and args.init.count("/") != 1:
        raise UsageError(f"--init {args.init}: no such checkpoint folder or file")
    cfg = train_config_from_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {args.output}: exists and is not a folder")
    if cfg.data is not None:
        from da3_plugins.core.datasets import FolderDataset

        try:
            FolderDataset(cfg.data)
        except ValueError as exc:
            raise UsageError(f"--data {exc}") from None
    log_file = None

    def log(entry):
        nonlocal log_file
        if log_file is None:  # opened at the first step, once the run has started
            log_file = open(out / "train_log.jsonl", "a")
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()
        if progress.mode == "json":
            progress.emit("step", **entry)

    try:
        result = train(cfg, out, resume=args.resume, progress=progress.mode == "bar", log=log, device=args.device)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        if log_file is not None:
            log_file.close()
    last = result.history[-1] if result.history else {}
    first = result.history[0] if result.history else {}
    print(f"Done: {result.steps} steps in {result.seconds:.0f} s; loss {first.get('loss', float('nan')):.3f} -> "
          f"{last.get('loss', float('nan')):.3f}. Checkpoint: {out}/ (config.json + model.safetensors)")
    print(f"  evaluate it: da3p eval --model {out}    use it: da3p reconstruct PHOTOS -o OUT --model {out}")
    return 0


def cmd_eval(args, progress: Progress) -> int:
    import torch

    from da3_plugins.core.evaluation import evaluate, heldout_scenes

    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = "cpu" if args.device == "auto" else args.device
    args.dtype = None
    model = _load(args, progress)
    if not model.predicts_cameras:
        raise UsageError(f"--model {args.model}: {model.preset} predicts no cameras; da3p eval scores poses too "
                         "(use an any-view model)")
    if args.data is not None:
        from da3_plugins.core.datasets import FolderDataset
        from da3_plugins.core.training import fit_views

        try:
            ds = FolderDataset(args.data)
        except ValueError as exc:
            raise UsageError(f"--data {exc}") from None
        h, w = args.size or (126, 168)
        scenes = []
        for i in range(len(ds)):
            s = ds[i]
            s.images, s.depth, s.intrinsics = fit_views(s.images, s.depth, s.intrinsics, h, w)
            scenes.append(s)
        where = f"{len(scenes)} scenes of {args.data}"
    else:
        h, w = args.size or (126, 168)
        progress.update("scenes", 0, args.scenes, "rendering held-out synthetic scenes")
        scenes = heldout_scenes(args.scenes, views=args.views, height=h, width=w, seed=args.seed)
        progress.update("scenes", args.scenes, args.scenes, "done")
        where = f"{len(scenes)} held-out synthetic scenes (seed {args.seed}), {args.views} views each, {h}x{w}"
    table = evaluate(model, scenes, baselines=not args.no_baselines, random_baseline=not args.no_baselines,
                     progress=lambda d, t: progress.update("eval", d, t, ""),
                     name=f"{model.preset} (embedded)" if args.model == "embedded" else (args.model or model.preset))
    if args.json:
        from da3_plugins.core.reconstruction import atomic_path

        with atomic_path(Path(args.json)) as tmp:
            Path(tmp).write_text(json.dumps({"scenes": where, **table.to_json()}, indent=2) + "\n")
    print(f"Evaluation on {where}:")
    print(table.format())
    print("AUC, delta1 and F-score in percent; AbsRel after one median scale per scene; Chamfer in units of the "
          "median true depth, F-score at 5% of it, after a Sim(3) fit.")
    return 0


def cmd_demo(args, progress: Progress) -> int:
    import numpy as np

    from da3_plugins.core import load_model
    from da3_plugins.core.export import write_preview
    from da3_plugins.core.images import load_images

    demo = Path(__file__).resolve().parent / "data" / "demo"
    files = sorted(demo.glob("view_*.png"))
    if not files:
        raise UsageError(f"{demo}: the bundled demo photos are missing (reinstall da3-plugins)")
    start = time.time()
    out = OutputDir(args.output, args.overwrite)
    try:
        progress.update("model", 0, 1, "embedded")
        try:
            model = load_model("embedded", device="cpu")
        except FileNotFoundError as exc:
            raise UsageError(str(exc)) from None
        progress.update("model", 1, 1, f"{model.preset} (embedded, {sum(p.numel() for p in model.net.parameters()) / 1e6:.1f} M parameters)")
        rec = model.reconstruct(load_images([str(f) for f in files]), process_res=args.process_res, progress=progress)
        written = write_exports(rec, out.tmp, ["scene", "ply", "glb", "colmap", "depth"], conf_threshold="auto",
                                progress=progress)
        progress.update("preview", 0, 1, "rendering")
        write_preview(out.tmp / "preview.png", rec)
        progress.update("preview", 1, 1, "done")
        written["preview"] = "preview.png"
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
    _report(final, written, progress,
            f"{len(rec)} demo views reconstructed with the embedded da3-tiny at {rec.width}x{rec.height} in {seconds:.1f} s")
    if progress.mode != "json":
        print(f"  camera error against the true cameras: median rotation {np.median(r_err):.1f} deg, "
              f"translation direction {np.median(t_err):.1f} deg (pose AUC@30 {100 * auc['auc30']:.1f})")
        print("  The embedded model is a small demo model trained on synthetic rooms: its depth maps are usable, its "
              "cameras only rough (the views' point clouds line up only loosely; see README, The embedded model).")
        print("  For real photos use an official checkpoint: huggingface-cli download depth-anything/DA3-BASE "
              "--local-dir DA3-BASE, then da3p reconstruct PHOTOS -o OUT --model DA3-BASE")
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
    t.add_argument("--batch-size", type=int, default=None, help="scenes per step (default 4)")
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
    t.add_argument("--seed", type=int, default=0, help="seeds weights, batches and everything random (default 0)")
    t.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic scene pool (default 0)")
    t.add_argument("--save-every", type=int, default=None, help="checkpoint interval in steps (default 250)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in the output folder")
    t.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    t.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="score a model on held-out scenes next to trivial baselines")
    ev.add_argument("--model", default=None, help="model folder, .safetensors, hub id or 'embedded'")
    ev.add_argument("--data", default=None, help="folder of scenes with depth and cameras (default: synthetic)")
    ev.add_argument("--scenes", type=int, default=24, help="held-out synthetic scenes (default 24)")
    ev.add_argument("--views", type=int, default=4, help="views per synthetic scene (default 4)")
    ev.add_argument("--size", type=_size, default=None, help="image size HEIGHTxWIDTH (default 126x168)")
    ev.add_argument("--seed", type=int, default=1000, help="seed of the held-out pool (default 1000; training uses 0)")
    ev.add_argument("--no-baselines", action="store_true", help="score the model only")
    ev.add_argument("--json", default=None, help="also write the table as JSON to this file")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    ev.add_argument("--threads", type=int, default=None)
    ev.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    ev.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="reconstruct the bundled example with the embedded model (offline)")
    d.add_argument("-o", "--output", default="da3-demo", help="output folder (default da3-demo)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    d.add_argument("--process-res", type=int, default=168, help="network input size (default 168, the embedded model's)")
    d.add_argument("--progress", choices=("bar", "json", "none"), default="bar")
    d.set_defaults(func=cmd_demo)

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
