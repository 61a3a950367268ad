"""Users' own training data: scene folders -> :class:`TrainingSample` (numpy + Pillow only).

A **scene folder** is one of (``docs/training-data.md`` has the details and an example):

(a) the simple format: ``images/`` plus ``cameras.json``::

        {"frames": [{"image": "images/000.png", "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
                     "w2c": [[...3x4 or 4x4...]], "depth": "depth/000.npy"}, ...],
         "depth_unit": 0.001}

    ``depth`` is optional per frame (missing or null: unknown, all zeros); a ``.npy`` holds
    float depth as is, a 16-bit ``.png`` holds ``depth / depth_unit`` (0 = unknown).  With a
    top-level ``"min_conf"``, a frame's optional ``"conf"`` (``.npy``, the image's size) makes
    pixels with ``conf < min_conf`` unknown (depth 0), as ``da3p``'s ``depth`` export writes.

(b) a COLMAP project: ``images/`` plus a sparse model in ``sparse/0/`` or ``sparse/`` (binary
    or text).  Depth comes from ``depth/<image stem>.npy`` or ``.png`` when a ``depth/``
    folder exists (the PNG unit from ``depth_units.json`` ``{"unit": ...}`` in ``depth/`` or
    the scene folder, or from ``cameras.json``'s ``depth_unit``), otherwise from the sparse
    3-D points: each observation's z-depth at its pixel, 0 elsewhere.

Conventions are the project's (``docs/conventions.md``): OpenCV world-to-camera poses, K in
pixels of the image it belongs to with pixel (col i, row j) centred at (i + 0.5, j + 0.5) --
COLMAP's convention too, so nothing is shifted.  Depth is z-depth; 0 means unknown.

Every view of a scene is brought to the first view's size (image resampled bicubic, depth
nearest, K scaled exactly).  Every problem with the input raises :class:`~.errors.DatasetError` (a ``ValueError``) with one
line naming the file at fault.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import conventions as conv
from .colmap_io import ColmapModel, model_format, read_colmap_model
from .errors import DatasetError
from .export.depth_images import depth_to_uint16, uint16_to_depth
from .points import resolve_conf_threshold
from .reconstruction import atomic_folder

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_ROTATION_TOL = 1e-3  # |R R^T - I| and |det R - 1| allowed in user-supplied poses


@dataclass
class TrainingSample:
    """The views of one scene, ready for training.

    Attributes:
        images: (N, H, W, 3) uint8 RGB.
        depth: (N, H, W) float32 z-depth, 0 where unknown.
        extrinsics: (N, 3, 4) float64 OpenCV world-to-camera.
        intrinsics: (N, 3, 3) float64, pixels of these images; the centre of pixel (col i,
            row j) is (i + 0.5, j + 0.5).
        name: the scene's name (its folder, relative to a :class:`FolderDataset`'s root).
    """

    images: np.ndarray
    depth: np.ndarray
    extrinsics: np.ndarray
    intrinsics: np.ndarray
    name: str = ""

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])

    def validate(self) -> "TrainingSample":
        """Check shapes, dtypes and values; returns self.  Raises ValueError naming the field."""
        im = np.asarray(self.images)
        if im.ndim != 4 or im.shape[-1] != 3 or im.shape[0] < 1:
            raise DatasetError(f"images: expected (N, H, W, 3) with N >= 1, got shape {im.shape}")
        if im.dtype != np.uint8:
            raise DatasetError(f"images: expected uint8, got {im.dtype}")
        n, h, w = im.shape[:3]
        checks = (("depth", self.depth, (n, h, w)), ("extrinsics", self.extrinsics, (n, 3, 4)),
                  ("intrinsics", self.intrinsics, (n, 3, 3)))
        for field_name, arr, shape in checks:
            arr = np.asarray(arr)
            if arr.shape != shape:
                raise DatasetError(f"{field_name}: expected shape {shape}, got {arr.shape}")
            if arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)):
                raise DatasetError(f"{field_name}: expected finite real numbers")
        if np.any(np.asarray(self.depth) < 0):
            raise DatasetError("depth: negative values (use 0 for unknown)")
        return self


# ------------------------------------------------------------------------------ finding scenes


def sparse_model_folder(scene: PathLike) -> Optional[Path]:
    """``sparse/0`` or ``sparse`` (in that order) when it holds a COLMAP model, else None."""
    scene = Path(scene)
    for cand in (scene / "sparse" / "0", scene / "sparse"):
        if cand.is_dir() and model_format(cand) is not None:
            return cand
    return None


def is_scene_folder(path: PathLike) -> bool:
    """Whether ``path`` looks like a scene: it has ``cameras.json``, or ``images/`` and a COLMAP
    model (see :func:`sparse_model_folder`)."""
    path = Path(path)
    if (path / "cameras.json").is_file():
        return True
    return (path / "images").is_dir() and sparse_model_folder(path) is not None


def find_scene_folders(root: PathLike) -> List[Path]:
    """Every scene folder at or below ``root``, sorted; a scene's own sub-folders and hidden
    folders (names starting with ``.``, e.g. unfinished writes) are not searched; symbolic
    links to folders are followed (a folder reached twice counts once)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    found: List[Path] = []
    seen = set()  # real paths: symbolic links are followed, each folder searched once
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = os.path.realpath(here)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        if is_scene_folder(here):
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return sorted(found)


class FolderDataset:
    """Every scene folder below ``root`` (``root`` itself may be one), loaded on access.

        ds = FolderDataset("my_scans")
        for i in range(len(ds)):
            sample = ds[i]          # TrainingSample, sample.name == ds.names[i]

    Args:
        root: a scene folder or a folder with scene folders anywhere below it.
        max_views: passed to :func:`load_scene_folder`.

    Raises:
        ValueError: ``root`` is not a folder or holds no scene.
    """

    def __init__(self, root: PathLike, max_views: Optional[int] = None) -> None:
        self.root = Path(root)
        _check_max_views(max_views)
        self.max_views = max_views
        self.folders = find_scene_folders(self.root)
        if not self.folders:
            raise DatasetError(f"{self.root}: no scene folder found (a scene has cameras.json, or images/ and "
                             "sparse/0/ or sparse/ with a COLMAP model)")
        root_name = self.root.resolve().name
        self.names: List[str] = [f.relative_to(self.root).as_posix() if f != self.root else root_name
                                 for f in self.folders]

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> TrainingSample:
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index: expected an integer, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} scenes")
        i = int(i) % len(self)
        sample = load_scene_folder(self.folders[i], self.max_views)
        sample.name = self.names[i]
        return sample

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, {len(self)} scenes)"


# ------------------------------------------------------------------------------ loading


@dataclass
class _View:
    """What a view needs before its files are read."""

    image: Path
    k: np.ndarray  # (3, 3) in pixels of k_size (or of the image itself when k_size is None)
    w2c: np.ndarray  # (3, 4)
    depth: Optional[Path] = None  # a depth file, or None
    conf: Optional[Path] = None  # a confidence .npy (simple format), or None
    sparse: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (xys (M, 2) in k_size pixels, z (M,))
    k_size: Optional[Tuple[int, int]] = None  # (H, W) K and xys refer to; checked against the image


def load_scene_folder(path: PathLike, max_views: Optional[int] = None) -> TrainingSample:
    """Read one scene folder (format (a) ``cameras.json`` with ``frames``, else (b) COLMAP).

    Args:
        path: the scene folder.
        max_views: keep only the first ``max_views`` views (frame order for (a), image name
            order for (b)); None keeps all.

    Returns:
        A :class:`TrainingSample` named after the folder, every view at the first view's size.

    Raises:
        ValueError: one line naming the file at fault (missing image, bad ``cameras.json``,
            depth of the wrong size, non-finite or negative depth, bad COLMAP model, ...).
    """
    path = Path(path)
    _check_max_views(max_views)
    views, cfg, min_conf = _scene_views(path, max_views)
    png_unit = _png_unit_reader(path, cfg)
    images, depths, ks, w2cs = [], [], [], []
    size: Optional[Tuple[int, int]] = None
    for view in views:
        img = _read_image(view.image)
        h, w = img.shape[:2]
        k, xys = _fit_camera(view, h, w)
        if size is None:
            size = (h, w)
        th, tw = size
        if view.depth is not None:
            d = _view_depth(view, h, w, png_unit, min_conf)
            if (h, w) != size:
                d = np.asarray(Image.fromarray(d).resize((tw, th), Image.NEAREST), np.float32)
        elif view.sparse is not None:
            d = _splat_depth(xys * np.array([tw / w, th / h]), view.sparse[1], th, tw)
        else:
            d = np.zeros(size, np.float32)
        if (h, w) != size:
            img = np.asarray(Image.fromarray(img).resize((tw, th), Image.BICUBIC), np.uint8)
            k = conv.rescale_intrinsics(k, (h, w), size)
        images.append(img)
        depths.append(d)
        ks.append(k)
        w2cs.append(np.asarray(view.w2c, np.float64)[:3])
    name = path.resolve().name
    return TrainingSample(images=np.stack(images), depth=np.stack(depths).astype(np.float32),
                          extrinsics=np.stack(w2cs), intrinsics=np.stack(ks), name=name)


def _check_max_views(max_views) -> None:
    if max_views is not None and (isinstance(max_views, bool) or not isinstance(max_views, (int, np.integer))
                                  or max_views < 1):
        raise DatasetError(f"max_views: expected None or an integer >= 1, got {max_views!r}")


def _scene_views(path: Path, max_views: Optional[int]) -> Tuple[List[_View], Optional[Dict[str, Any]], Optional[float]]:
    """A scene folder's views (format (a) ``cameras.json`` with ``frames``, else (b) COLMAP),
    its ``cameras.json`` (or None) and its ``min_conf`` (None: no confidence masking)."""
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder")
    cfg = _read_cameras_json(path)
    if cfg is not None and "frames" in cfg:
        return _simple_views(path, cfg, max_views), cfg, _min_conf(path, cfg)
    sparse = sparse_model_folder(path)
    if sparse is None:
        if cfg is not None:
            raise DatasetError(f"{path / 'cameras.json'}: no 'frames' list (and no COLMAP model in sparse/)")
        raise DatasetError(f"{path}: not a scene folder (expected cameras.json, or images/ and a COLMAP model in "
                           "sparse/0/ or sparse/)")
    return _colmap_views(path, read_colmap_model(sparse), max_views), cfg, None


def _png_unit_reader(scene: Path, cfg: Optional[Dict[str, Any]]):
    """``png_unit(depth_file)`` for :func:`_read_depth`: :func:`_png_unit`, once per folder."""
    cache: Dict[Path, float] = {}
    return lambda f: cache[f.parent] if f.parent in cache else cache.setdefault(f.parent, _png_unit(scene, cfg, f))


def _fit_camera(view: _View, h: int, w: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The view's K and sparse observations (or None) in pixels of its h x w image file (a
    COLMAP camera of another size is scaled; a different aspect ratio is an error)."""
    k = np.asarray(view.k, np.float64)
    xys = None if view.sparse is None else view.sparse[0]
    if view.k_size is not None and view.k_size != (h, w):
        kh, kw = view.k_size
        if abs((w / h) / (kw / kh) - 1) > 1e-2:
            raise DatasetError(f"{view.image}: the image is {w} x {h} but its COLMAP camera is {kw} x {kh} "
                               "(a different aspect ratio)")
        k = conv.rescale_intrinsics(k, (kh, kw), (h, w))
        if xys is not None:
            xys = xys * np.array([w / kw, h / kh])
    return k, xys


def _view_depth(view: _View, h: int, w: int, png_unit, min_conf: Optional[float]) -> np.ndarray:
    """The view's depth file read and checked against its h x w image; with ``min_conf`` and a
    confidence file, pixels with ``conf < min_conf`` become 0 (unknown)."""
    d = _read_depth(view.depth, png_unit)
    if d.shape != (h, w):
        raise DatasetError(f"{view.depth}: depth is {d.shape[1]} x {d.shape[0]} but its image "
                           f"{view.image.name} is {w} x {h}")
    if min_conf is not None and view.conf is not None:
        f = view.conf
        if not f.is_file() or f.suffix.lower() != ".npy":
            raise DatasetError(f"{f}: confidence file missing" if not f.is_file() else f"{f}: use .npy for confidence")
        c = _read_npy_map(f)
        if np.isnan(c).any():
            raise DatasetError(f"{f}: NaN confidence values")
        if c.shape != (h, w):
            raise DatasetError(f"{view.conf}: confidence is {c.shape[1]} x {c.shape[0]} but its image "
                               f"{view.image.name} is {w} x {h}")
        d = np.where(c < min_conf, np.float32(0), d)
    return d


def _min_conf(scene: Path, cfg: Dict[str, Any]) -> Optional[float]:
    """``cameras.json``'s ``min_conf``: a finite number, or None when missing or null."""
    value = cfg.get("min_conf")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
        raise DatasetError(f"{scene / 'cameras.json'}: 'min_conf' must be a number or null, got {value!r}")
    return None if value is None else float(value)


def _read_cameras_json(scene: Path) -> Optional[Dict[str, Any]]:
    f = scene / "cameras.json"
    if not f.is_file():
        return None
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{f}: not valid JSON ({_first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise DatasetError(f"{f}: expected a JSON object with a 'frames' list")
    return cfg


def _matrix(value, shapes: Sequence[Tuple[int, int]], where: str) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: expected a matrix of numbers") from None
    if m.shape not in shapes:
        want = " or ".join(f"{a}x{b}" for a, b in shapes)
        raise DatasetError(f"{where}: expected {want}, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise DatasetError(f"{where}: non-finite values")
    return m


def _simple_views(scene: Path, cfg: Dict[str, Any], max_views: Optional[int]) -> List[_View]:
    src = scene / "cameras.json"
    frames = cfg["frames"]
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{src}: 'frames' must be a non-empty list")
    views: List[_View] = []
    for i, fr in enumerate(frames[:max_views]):
        where = f"{src}: frames[{i}]"
        if not isinstance(fr, dict):
            raise DatasetError(f"{where}: expected an object with 'image', 'K' and 'w2c'")
        for key in ("image", "K", "w2c"):
            if key not in fr:
                raise DatasetError(f"{where}: missing '{key}'")
        if not isinstance(fr["image"], str) or not fr["image"]:
            raise DatasetError(f"{where}.image: expected a path relative to the scene folder")
        k = _matrix(fr["K"], [(3, 3)], f"{where}.K")
        if not (k[0, 0] > 0 and k[1, 1] > 0 and np.allclose(k[2], [0, 0, 1])):
            raise DatasetError(f"{where}.K: expected [[fx, s, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
        w2c = _matrix(fr["w2c"], [(3, 4), (4, 4)], f"{where}.w2c")
        if w2c.shape == (4, 4) and not np.allclose(w2c[3], [0, 0, 0, 1]):
            raise DatasetError(f"{where}.w2c: the last row of a 4x4 must be [0, 0, 0, 1]")
        r = w2c[:3, :3]
        if np.abs(r @ r.T - np.eye(3)).max() > _ROTATION_TOL or abs(np.linalg.det(r) - 1) > _ROTATION_TOL:
            raise DatasetError(f"{where}.w2c: the 3x3 part is not a rotation (world-to-camera [R | t] expected)")
        depth = fr.get("depth")
        if depth is not None and (not isinstance(depth, str) or not depth):
            raise DatasetError(f"{where}.depth: expected a path relative to the scene folder, or null")
        conf = fr.get("conf")
        if conf is not None and (not isinstance(conf, str) or not conf):
            raise DatasetError(f"{where}.conf: expected a path (.npy) relative to the scene folder, or null")
        views.append(_View(image=scene / fr["image"], k=k, w2c=w2c[:3],
                           depth=None if depth is None else scene / depth,
                           conf=None if conf is None else scene / conf))
    return views


def _colmap_views(scene: Path, model: ColmapModel, max_views: Optional[int]) -> List[_View]:
    images = sorted(model.images.values(), key=lambda im: im.name)
    if not images:
        raise DatasetError(f"{model.path}: the COLMAP model has no image")
    images = images[:max_views]
    depth_dir = scene / "depth"
    k_cache: Dict[int, np.ndarray] = {}
    views: List[_View] = []
    for im in images:
        cam = model.cameras[im.camera_id]
        if cam.id not in k_cache:
            k_cache[cam.id] = cam.intrinsics()  # ValueError names the file and model
        w2c = im.world_to_camera()
        view = _View(image=scene / "images" / im.name, k=k_cache[cam.id], w2c=w2c,
                     k_size=(int(cam.height), int(cam.width)))
        if depth_dir.is_dir():
            stem = Path(im.name).with_suffix("")
            cands = [depth_dir / f"{stem}{ext}" for ext in (".npy", ".png")]
            found = [c for c in cands if c.is_file()]
            if not found:
                raise DatasetError(f"{cands[0]}: missing (depth/ exists, so every image needs "
                                 f"depth/<image stem>.npy or .png)")
            view.depth = found[0]
        else:
            rows = model.point_rows(im.point3D_ids)
            ok = rows >= 0
            xyz = model.points[rows[ok]]
            z = xyz @ w2c[2, :3] + w2c[2, 3]
            view.sparse = (im.xys[ok].astype(np.float64), z)
        views.append(view)
    return views


def _splat_depth(xys: np.ndarray, z: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w) float32 depth with each observation's z at the pixel containing it (the nearest
    one wins where several fall in one pixel); 0 elsewhere."""
    out = np.full((h, w), np.inf)
    if len(z):
        col = np.floor(xys[:, 0])
        row = np.floor(xys[:, 1])
        ok = np.isfinite(z) & (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        np.minimum.at(out, (row[ok].astype(np.int64), col[ok].astype(np.int64)), z[ok])
    out[np.isinf(out)] = 0.0
    return out.astype(np.float32)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _read_image(f: Path) -> np.ndarray:
    """(H, W, 3) uint8 as stored.  Not ``images.load_image_file``: that one turns photos upright
    by their EXIF tag, which would no longer match the K and poses given for the stored pixels."""
    if not f.is_file():
        raise DatasetError(f"{f}: image missing")
    if f.suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f"{f}: not a PNG or JPEG file")
    try:
        with Image.open(f) as im:
            im.load()
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            return np.array(rgb, np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{f}: cannot be read as an image ({_first_line(e)})") from None


def _png_unit(scene: Path, cfg: Optional[Dict[str, Any]], depth_file: Path) -> float:
    """The metres (or whatever) per step of 16-bit depth PNGs: ``cameras.json`` ``depth_unit``,
    else ``depth_units.json`` ``unit`` beside the PNG, else in the scene folder."""
    cands: List[Tuple[Path, Any]] = []
    if cfg is not None and "depth_unit" in cfg:
        cands.append((scene / "cameras.json", cfg["depth_unit"]))
    else:
        for d in (depth_file.parent, scene):
            f = d / "depth_units.json"
            if f.is_file():
                try:
                    data = json.loads(f.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                    raise DatasetError(f"{f}: not valid JSON ({_first_line(e)})") from None
                if not isinstance(data, dict) or "unit" not in data:
                    raise DatasetError(f"{f}: expected {{\"unit\": <depth per PNG step>}}")
                cands.append((f, data["unit"]))
                break
    if not cands:
        raise DatasetError(f"{depth_file}: a 16-bit depth PNG needs a unit: 'depth_unit' in cameras.json or "
                         "depth_units.json {\"unit\": ...}")
    src, unit = cands[0]
    if isinstance(unit, bool) or not isinstance(unit, (int, float)) or not math.isfinite(unit) or unit <= 0:
        raise DatasetError(f"{src}: the depth unit must be a positive number, got {unit!r}")
    return float(unit)


def _read_depth(f: Path, png_unit) -> np.ndarray:
    """(H, W) float32 depth from ``.npy`` (as is) or 16-bit ``.png`` (times the unit)."""
    if not f.is_file():
        raise DatasetError(f"{f}: depth file missing")
    suffix = f.suffix.lower()
    if suffix == ".npy":
        d = _read_npy_map(f)
    elif suffix == ".png":
        try:
            with Image.open(f) as im:
                im.load()
                mode = im.mode
                raw = np.array(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{f}: cannot be read as a PNG ({_first_line(e)})") from None
        if mode not in ("I;16", "I;16B", "I;16L", "I") or raw.ndim != 2:
            raise DatasetError(f"{f}: expected a 16-bit single-channel PNG, got mode {mode}")
        if raw.min(initial=0) < 0 or raw.max(initial=0) > 65535:
            raise DatasetError(f"{f}: values outside 0..65535")
        d = np.nan_to_num(uint16_to_depth(raw, png_unit(f)), nan=0.0)  # 0 stays "unknown"
    else:
        raise DatasetError(f"{f}: unsupported depth file (use .npy or 16-bit .png)")
    if not np.all(np.isfinite(d)):
        raise DatasetError(f"{f}: non-finite depth values (use 0 for unknown)")
    if np.any(d < 0):
        raise DatasetError(f"{f}: negative depth values (use 0 for unknown)")
    return d


def _read_npy_map(f: Path) -> np.ndarray:
    """(H, W) float32 from an ``.npy`` file of an (H, W) or (H, W, 1) array of numbers."""
    try:
        d = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"{f}: cannot be read as .npy ({_first_line(e)})") from None
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2 or d.dtype.kind not in "fiu":
        raise DatasetError(f"{f}: expected an (H, W) array of numbers, got {d.dtype} {d.shape}")
    return d.astype(np.float32)


# ------------------------------------------------------------------------------ writing


def write_scene_folder(path: PathLike, sample: TrainingSample, *, depth_format: str = "npy",
                       depth_unit: float = 1e-3, overwrite: bool = False) -> Path:
    """Write ``sample`` as a format (a) scene folder: ``images/000.png`` ..., ``depth/000.npy``
    (float32, exact) or ``depth/000.png`` (16-bit, ``round(depth / depth_unit)``), and
    ``cameras.json``.  The folder is written whole under a temporary name and renamed.

    Args:
        depth_format: ``"npy"`` (exact) or ``"png"`` (16-bit, within ``depth_unit / 2``).
        depth_unit: the depth of one PNG step (``"png"`` only), recorded as ``depth_unit``.
        overwrite: replace an existing folder; otherwise an existing one is an error.

    Returns:
        ``path``.

    Raises:
        ValueError: a bad sample, or depth too deep for 16 bits at ``depth_unit``.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    sample.validate()
    if depth_format not in ("npy", "png"):
        raise DatasetError(f"depth_format: expected 'npy' or 'png', got {depth_format!r}")
    depth = np.asarray(sample.depth, np.float32)
    q = None
    if depth_format == "png":
        if isinstance(depth_unit, bool) or not isinstance(depth_unit, (int, float)) or not (
                math.isfinite(depth_unit) and depth_unit > 0):
            raise DatasetError(f"depth_unit: expected a positive number, got {depth_unit!r}")
        if np.round(float(depth.max(initial=0)) / depth_unit) > 65535:
            raise DatasetError(f"depth_unit: the deepest value {float(depth.max()):g} needs more than 16 bits at "
                             f"unit {depth_unit:g}; use a unit >= {float(depth.max()) / 65535:.3g}")
        q, _ = depth_to_uint16(depth, depth_unit)  # known depth never becomes "unknown" (0)
    n = sample.num_views
    digits = max(3, len(str(n - 1)))
    frames = []
    with atomic_folder(path, overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "depth").mkdir()
        for i in range(n):
            stem = f"{i:0{digits}d}"
            Image.fromarray(np.ascontiguousarray(sample.images[i])).save(tmp / "images" / f"{stem}.png")
            if q is None:
                np.save(tmp / "depth" / f"{stem}.npy", depth[i])
            else:
                Image.fromarray(q[i]).save(tmp / "depth" / f"{stem}.png")
            frames.append({"image": f"images/{stem}.png",
                           "K": np.asarray(sample.intrinsics[i], np.float64).tolist(),
                           "w2c": np.asarray(sample.extrinsics[i], np.float64).tolist(),
                           "depth": f"depth/{stem}.{depth_format}"})
        cfg: Dict[str, Any] = {"frames": frames}
        if q is not None:
            cfg["depth_unit"] = float(depth_unit)
        (tmp / "cameras.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return path


def sample_from_reconstruction(rec, conf_threshold: Union[None, float, str] = "auto",
                               drop_sky: bool = True) -> TrainingSample:
    """A :class:`core.reconstruction.Reconstruction` (e.g. ``Reconstruction.load("scene.npz")``
    from ``da3p reconstruct``) as a training sample: its processed images, poses and K, and
    its depth with 0 where the pixel is invalid, below ``conf_threshold`` ("auto": the
    official percentile rule; None: keep all) or sky."""
    valid = rec.valid_mask(resolve_conf_threshold(conf_threshold, rec.conf), drop_sky=drop_sky)
    depth = np.where(valid, rec.depth, 0).astype(np.float32)
    return TrainingSample(images=rec.images.copy(), depth=depth, extrinsics=rec.extrinsics[:, :3].astype(np.float64),
                          intrinsics=rec.intrinsics.astype(np.float64), name="").validate()
