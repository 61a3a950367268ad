"""The export registry: every file ``da3p`` can write, in one table.

Each :class:`ExportFormat` has a name (the ``--export`` choice), the file or folder it writes
inside the output folder, the writer, whether it needs Gaussians, what opens the file, and a
one-line description of its content.  The ``da3p`` choices, the "open with" lines after a run,
the worker and the README's export table (checked by a test) all read :data:`EXPORTS`.

Writers are imported when called, so reading the registry imports neither torch nor Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

from ..errors import UserInputError

ProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` for writers that take long (the video renders frame by frame)."""

GAUSSIAN_MODELS_HINT = ("use --gaussians with a model that has a Gaussian head: da3-giant, "
                        "da3nested-giant-large")


@dataclass(frozen=True)
class ExportFormat:
    """One file format ``da3p`` writes.

    Attributes:
        name: the ``--export`` choice, e.g. ``"glb"``.
        path: where it goes inside the output folder (a file or a folder), e.g. ``"scene.glb"``.
        writer: ``"module:function"`` in :mod:`da3_plugins.core.export` (or the scene's own
            ``save``: ``"scene"``); called as ``writer(output_path, rec, **keywords)``.
        needs_gaussians: the reconstruction must have Gaussians (``--gaussians``).
        opens_with: what opens the file, for people.
        content: what is in it (the README table's second column).
        takes_conf_threshold: the writer filters points by confidence.
        takes_progress: the writer reports ``progress(done, total)``.
        default: part of ``da3p``'s default ``--export`` list.
    """

    name: str
    path: str
    writer: str
    needs_gaussians: bool
    opens_with: str
    content: str
    takes_conf_threshold: bool = False
    takes_progress: bool = False
    default: bool = False

    def check(self, rec) -> None:
        """Refuse a reconstruction this format cannot be written from (one-line error)."""
        if self.needs_gaussians and rec.gaussians is None:
            raise UserInputError(f"--export {self.name}: the reconstruction has no Gaussians ({GAUSSIAN_MODELS_HINT})")

    def write(self, rec, folder: Path, *, conf_threshold="auto", progress: Optional[ProgressFn] = None) -> Path:
        """Write this format for ``rec`` into ``folder``; returns the written path."""
        self.check(rec)
        target = Path(folder) / self.path
        if self.writer == "scene":
            return Path(rec.save(target))
        module, func = self.writer.split(":")
        fn = getattr(import_module(f".{module}", __package__), func)
        kwargs = {}
        if self.takes_conf_threshold:
            kwargs["conf_threshold"] = conf_threshold
        if self.takes_progress and progress is not None:
            kwargs["progress"] = progress
        return Path(fn(target, rec, **kwargs))


_FORMATS: Tuple[ExportFormat, ...] = (
    ExportFormat("scene", "scene.npz", "scene", False,
                 "da3p export, the Blender add-on (File > Import > DA3 Reconstruction) or Reconstruction.load",
                 "the whole reconstruction, numpy only ([schema](docs/scene-file.md))", default=True),
    ExportFormat("ply", "points.ply", "ply:write_point_ply", False, "MeshLab, CloudCompare, Blender, Open3D",
                 "x y z, red green blue, confidence, view", takes_conf_threshold=True, default=True),
    ExportFormat("gs-ply", "gaussians.ply", "ply:write_gaussian_ply", True,
                 "a Gaussian-splat viewer (SuperSplat, gsplat, nerfstudio)",
                 "3DGS layout (f_dc, f_rest, logit opacity, log scales, quaternion)"),
    ExportFormat("gs-video", "gaussians.mp4", "video:write_gaussian_video", True, "any video player",
                 "a fly-through the input cameras, rendered by the core's own rasteriser", takes_progress=True),
    ExportFormat("glb", "scene.glb", "gltf:write_glb", False,
                 "any glTF viewer, Blender (File > Import > glTF), a web browser via gltf-viewer",
                 "coloured points + camera frusta, glTF axes", takes_conf_threshold=True, default=True),
    ExportFormat("colmap", "colmap/sparse/0", "colmap:write_colmap", False,
                 "COLMAP GUI, pycolmap, gsplat/nerfstudio trainers (ns-process-data skip)",
                 "{cameras,images,points3D}.bin: PINHOLE at the original size", takes_conf_threshold=True),
    ExportFormat("nerfstudio", "nerfstudio", "nerfstudio:write_nerfstudio", False,
                 "ns-train splatfacto --data <folder>", "transforms.json + images + seed points (+ 16-bit depth)"),
    ExportFormat("depth", "depth", "depth_images:write_depth_images", False,
                 "any image viewer (colour maps), tools reading 16-bit PNG, da3p train --data",
                 "*_depth.png (colour), *_conf.png, *_depth16.png, *_preview.png; a training-data scene: "
                 "cameras.json, images/, *_depth.npy, *_conf.npy ([format](docs/training-data.md))", default=True),
    ExportFormat("preview", "preview.png", "preview:write_preview", False,
                 "any image viewer (input views, depth maps, a rendered novel view)",
                 "input views, turbo depth maps and a novel view rendered by the core's rasteriser",
                 takes_conf_threshold=True),
)

EXPORTS: Dict[str, ExportFormat] = {f.name: f for f in _FORMATS}
"""Every export format by name, in the order ``da3p`` lists them."""
EXPORT_NAMES: Tuple[str, ...] = tuple(EXPORTS)
DEFAULT_EXPORTS: Tuple[str, ...] = tuple(f.name for f in _FORMATS if f.default)


def parse_export_list(text: str, *, flag: str = "--export") -> Tuple[str, ...]:
    """``"scene,ply"`` -> ("scene", "ply"): known names, duplicates dropped, order kept."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserInputError(f"{flag}: give at least one format ({', '.join(EXPORT_NAMES)})")
    for t in items:
        if t not in EXPORTS:
            raise UserInputError(f"{flag}: unknown format {t!r}; choose from {', '.join(EXPORT_NAMES)}")
    return tuple(dict.fromkeys(items))


def write_exports(rec, folder: Path, names: Sequence[str], *, conf_threshold="auto",
                  progress: Optional[Callable[[str, int, int, str], None]] = None) -> Dict[str, str]:
    """Write each named format into ``folder``; returns {name: path relative to folder}.

    ``progress(stage, done, total, message)`` hears about each format ("export") and about the
    frames of a video ("video")."""
    report = progress or (lambda *a: None)
    for name in names:  # refuse before writing anything
        EXPORTS[name].check(rec)
    written: Dict[str, str] = {}
    total = len(names)
    for i, name in enumerate(names):
        report("export", i, total, name)
        fmt = EXPORTS[name]
        path = fmt.write(rec, Path(folder), conf_threshold=conf_threshold,
                         progress=lambda d, t: report("video", d, t, "rendering"))
        written[name] = str(Path(path).relative_to(folder))
    report("export", total, total, "done")
    return written


def markdown_table() -> str:
    """The README's export table, made from the registry (a test keeps the README equal to it)."""
    rows = ["| `--export` | file | read it with |", "|---|---|---|"]
    for f in _FORMATS:
        shown = f.path if "." in Path(f.path).name else f.path + "/"  # folders end in a slash
        rows.append(f"| `{f.name}` | `{shown}`: {f.content} | {f.opens_with} |")
    return "\n".join(rows)
