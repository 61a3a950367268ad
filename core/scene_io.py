"""The scene file's two forms on disk, and a writer that fills a scene folder view by view.

numpy + the standard library only: the Blender extension vendors this module unchanged (its one
import, ``errors``, works inside the package and as a plain module).  The arrays and their
meaning are in ``docs/scene-file.md``; :class:`~.reconstruction.Reconstruction` turns them into a
scene (``save`` / ``load``).  Here:

* **npz**: one compressed archive (``numpy.savez_compressed``), every value an array; the
  scalars are 0-d arrays and the options a JSON string (``options_json``).
* **folder**: ``scene.json`` (the scalars: schema, schema_version, image_names, is_metric,
  model, options) and one uncompressed ``<key>.npy`` per array, with the npz's keys.  Read back
  memory-mapped: nothing is read until used, so scenes larger than memory work.
* :class:`SceneWriter` creates a scene folder's ``.npy`` files at their full size and lets a
  producer fill the views' rows as they arrive and append Gaussians chunk by chunk, then
  renames the finished folder into place (an interrupted run leaves nothing behind).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import numpy as np

try:  # inside the package
    from .errors import UserInputError
except ImportError:  # copied as plain modules (the Blender extension)
    from errors import UserInputError  # type: ignore[no-redef]

SCHEMA_NAME = "da3-plugins.reconstruction"
SCHEMA_VERSION = 1
SCENE_JSON = "scene.json"
"""The scalars of a scene folder; its presence makes a folder a scene folder."""

PathLike = Union[str, os.PathLike]

VIEW_ARRAYS = ("images", "depth", "conf", "sky")
"""Per-pixel arrays (N, H, W[, 3]): memory-mapped when a folder is read."""
CAMERA_ARRAYS = ("extrinsics", "intrinsics", "original_sizes", "pixel_transform")
"""A few numbers per view: read into memory."""
GAUSSIAN_FIELDS = ("means", "scales", "rotations", "harmonics", "opacities", "view")
"""``gs_<field>`` arrays (G, ...): memory-mapped when a folder is read."""
ARRAY_KEYS = VIEW_ARRAYS + CAMERA_ARRAYS + tuple(f"gs_{f}" for f in GAUSSIAN_FIELDS)
REQUIRED_ARRAYS = ("images", "depth", "extrinsics", "intrinsics")
_DTYPES = {"images": np.uint8, "depth": np.float32, "conf": np.float32, "sky": np.bool_,
           "extrinsics": np.float64, "intrinsics": np.float64, "original_sizes": np.int64,
           "pixel_transform": np.float64, "gs_view": np.int32}  # other gs_* arrays: float32


class SceneFileError(UserInputError):
    """A scene file that cannot be read: wrong schema, newer version, missing or bad arrays."""


# ---------------------------------------------------------------------------------- forms


def is_scene_folder(path: PathLike) -> bool:
    """A folder holding ``scene.json``."""
    return (Path(path) / SCENE_JSON).is_file()


def find_scene(path: PathLike) -> Optional[Path]:
    """The scene at ``path``: a scene file, a scene folder (or its ``scene.json``), or a folder
    holding ``scene/`` (a scene folder, looked for first) or ``scene.npz`` (an output folder of
    ``da3p reconstruct``); None when there is none."""
    p = Path(path)
    if p.is_file():
        return p.parent if p.name == SCENE_JSON else p
    if p.is_dir():
        if is_scene_folder(p):
            return p
        if is_scene_folder(p / "scene"):
            return p / "scene"
        if (p / "scene.npz").is_file():
            return p / "scene.npz"
    return None


def save_target(path: PathLike, form: str = "auto") -> Tuple[Path, str]:
    """Where :meth:`Reconstruction.save` writes and in which form: ``(path, "npz" | "folder")``.

    ``"npz"``: ``path``, with ``.npz`` appended unless it ends so.  ``"folder"``: ``path`` as
    given.  ``"auto"``: a folder when ``path`` is an existing scene folder (it is replaced in
    its own form), else npz as ``"npz"`` (so ``save("x")`` writes ``x.npz``, as always)."""
    path = Path(path)
    if form == "auto":
        form = "folder" if is_scene_folder(path) else "npz"
    if form == "npz":
        return (path if path.suffix == ".npz" else path.with_name(path.name + ".npz")), "npz"
    if form == "folder":
        if path.suffix == ".npz":
            raise ValueError(f"{path}: a scene folder's name must not end in .npz (form='folder')")
        if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_scene_folder(path))):
            raise ValueError(f"{path}: exists and is not a scene folder; refusing to replace it")
        return path, "folder"
    raise ValueError(f"form: expected 'auto', 'npz' or 'folder', got {form!r}")


# ---------------------------------------------------------------------------------- writing


def header_of(image_names: Iterable[str], is_metric: bool, model: str, options: Any) -> Dict[str, Any]:
    """The scalars of a scene: ``options`` is a SceneOptions (``to_saved()``) or a mapping."""
    saved = options.to_saved() if hasattr(options, "to_saved") else dict(options or {})
    saved = json.loads(json.dumps(saved, sort_keys=True, default=_json_default))
    return {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "image_names": [str(x) for x in image_names],
            "is_metric": bool(is_metric), "model": str(model), "options": saved}


def write_npz(path: PathLike, header: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> Path:
    """One compressed archive, atomically (arrays are streamed: memory maps stay on disk)."""
    values: Dict[str, np.ndarray] = {
        "schema": np.array(header["schema"]),
        "schema_version": np.array(header["schema_version"], dtype=np.int64),
        "image_names": np.array(header["image_names"], dtype=np.str_),
        "is_metric": np.array(header["is_metric"]),
        "model": np.array(header["model"]),
        "options_json": np.array(json.dumps(header["options"], sort_keys=True)),
    }
    values.update(arrays)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **values)
    return path


def _write_header_json(folder: Path, header: Dict[str, Any]) -> None:
    (folder / SCENE_JSON).write_text(json.dumps(header, indent=1) + "\n", encoding="utf-8")


class SceneWriter:
    """A scene folder written while it is made: per-view rows as they come, Gaussians by chunks.

    The per-pixel ``.npy`` files are created at full size with ``numpy.lib.format.open_memmap``
    in a temporary folder beside ``path``; :meth:`write_views` fills rows and flushes them to
    disk, so memory holds one chunk at a time.  The cameras (a few numbers per view) stay in
    memory until :meth:`finish`.  :meth:`add_gaussians` appends raw parts, joined into the
    ``gs_*.npy`` files by streaming at :meth:`finish`, which also writes ``scene.json`` and
    renames the folder onto ``path``.  :meth:`abort` (or leaving a ``with`` block without
    :meth:`finish`) removes everything.

    Typical use::

        with SceneWriter("out/scene", n, h, w, conf=True) as sw:
            for start, chunk in chunks:                  # any order; each row at least once
                sw.write_views(start, images=..., depth=..., conf=..., extrinsics=..., intrinsics=...)
                sw.add_gaussians(means=..., scales=..., ...)   # optional, any number of times
            sw.depth[:] ...                              # the open maps can be read and changed
            path = sw.finish(image_names=names, is_metric=False, model="...", options=scene_options)
        rec = Reconstruction.load(path)                  # memory-mapped
    """

    def __init__(self, path: PathLike, num_views: int, height: int, width: int, *, conf: bool = True,
                 sky: bool = False, overwrite: bool = True) -> None:
        self.path = Path(path)
        if self.path.suffix == ".npz":
            raise ValueError(f"{self.path}: a scene folder's name must not end in .npz")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path}: exists (pass overwrite=True to replace it)")
        if self.path.exists() and (not self.path.is_dir() or (any(self.path.iterdir())
                                                              and not is_scene_folder(self.path))):
            raise FileExistsError(f"{self.path}: exists and is not a scene folder; refusing to replace it")
        n, h, w = int(num_views), int(height), int(width)
        if n < 1 or h < 1 or w < 1:
            raise ValueError(f"num_views, height, width: expected >= 1, got {num_views}, {height}, {width}")
        self.num_views, self.height, self.width = n, h, w
        self._folder = atomic_folder(self.path, overwrite=True)
        self.tmp = self._folder.__enter__()
        self._open = True
        self.maps: Dict[str, np.memmap] = {}
        try:
            shapes = {"images": (n, h, w, 3), "depth": (n, h, w), "conf": (n, h, w), "sky": (n, h, w)}
            for key in VIEW_ARRAYS:
                if key in ("images", "depth") or (key == "conf" and conf) or (key == "sky" and sky):
                    self.maps[key] = np.lib.format.open_memmap(self.tmp / f"{key}.npy", mode="w+",
                                                               dtype=_DTYPES[key], shape=shapes[key])
        except BaseException:
            self.abort()
            raise
        self.cameras: Dict[str, np.ndarray] = {
            "extrinsics": np.zeros((n, 3, 4)), "intrinsics": np.zeros((n, 3, 3)),
            "original_sizes": np.tile(np.array([[h, w]], np.int64), (n, 1)), "pixel_transform": None}
        self.written = np.zeros(n, bool)
        self._gs_count: Optional[int] = None  # None: no Gaussians added (0: an empty set)
        self._gs_k: Optional[int] = None
        self._gs_view: Optional[bool] = None

    # the open arrays, readable and writable until finish
    images = property(lambda self: self.maps["images"])
    depth = property(lambda self: self.maps["depth"])
    conf = property(lambda self: self.maps.get("conf"))
    sky = property(lambda self: self.maps.get("sky"))

    def __enter__(self) -> "SceneWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._open:
            self.abort()
        return False

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError(f"{self.path}: the scene writer is closed (finished or aborted)")

    def declare(self, key: str) -> np.memmap:
        """The map of an optional per-view array ("conf", "sky"), created now if the writer was
        made without it (for producers that learn late whether they have one)."""
        self._check_open()
        if key not in VIEW_ARRAYS:
            raise ValueError(f"declare: {key!r} is not a per-view array ({', '.join(VIEW_ARRAYS)})")
        if key not in self.maps:
            shape = (self.num_views, self.height, self.width) + ((3,) if key == "images" else ())
            self.maps[key] = np.lib.format.open_memmap(self.tmp / f"{key}.npy", mode="w+", dtype=_DTYPES[key],
                                                       shape=shape)
        return self.maps[key]

    def set_cameras(self, *, extrinsics: np.ndarray, intrinsics: np.ndarray,
                    original_sizes: Optional[np.ndarray] = None, pixel_transform: Optional[np.ndarray] = None) -> None:
        """The cameras of every view at once, for producers that filled the open maps directly;
        every view then counts as written."""
        self._check_open()
        n = self.num_views
        ext = np.asarray(extrinsics, np.float64)
        ext = ext[:, :3, :] if ext.shape == (n, 4, 4) else ext
        for key, arr, shape in (("extrinsics", ext, (n, 3, 4)), ("intrinsics", intrinsics, (n, 3, 3)),
                                ("original_sizes", original_sizes, (n, 2)), ("pixel_transform", pixel_transform, (n, 3, 3))):
            if arr is None:
                continue
            if np.shape(arr) != shape:
                raise ValueError(f"set_cameras: {key}: expected shape {shape}, got {np.shape(arr)}")
            self.cameras[key] = np.array(arr, dtype=_DTYPES[key])
        self.written[:] = True

    def write_views(self, start: int, *, images: np.ndarray, depth: np.ndarray,
                    extrinsics: np.ndarray, intrinsics: np.ndarray, conf: Optional[np.ndarray] = None,
                    sky: Optional[np.ndarray] = None, original_sizes: Optional[np.ndarray] = None,
                    pixel_transform: Optional[np.ndarray] = None, flush: bool = True) -> None:
        """Rows ``start .. start + k - 1`` (k = ``len(images)``) of every per-view array.

        ``conf`` is required when the writer has one (``conf=True``), ``sky`` likewise;
        ``extrinsics`` may be (k, 4, 4).  Rows may be written again (the last write counts)."""
        self._check_open()
        images = np.asarray(images)
        k = images.shape[0] if images.ndim == 4 else -1
        start = int(start)
        if k < 1 or start < 0 or start + k > self.num_views:
            raise ValueError(f"write_views: rows {start}..{start + k - 1} outside 0..{self.num_views - 1} "
                             f"(images shape {images.shape})")
        if images.dtype != np.uint8 or (sky is not None and np.asarray(sky).dtype != np.bool_):
            raise ValueError("write_views: images must be uint8 and sky bool")
        given = {"images": images, "depth": depth, "conf": conf, "sky": sky}
        for key, arr in given.items():
            if (arr is None) != (key not in self.maps):
                why = "is required (the writer was made with it)" if arr is None else \
                    "was not declared when the writer was made"
                raise ValueError(f"write_views: {key} {why}")
        ext = np.asarray(extrinsics, np.float64)
        if ext.shape == (k, 4, 4):
            ext = ext[:, :3, :]
        rows = {"extrinsics": ext, "intrinsics": intrinsics, "original_sizes": original_sizes,
                "pixel_transform": pixel_transform}
        expect = {"images": (k, self.height, self.width, 3), "extrinsics": (k, 3, 4), "intrinsics": (k, 3, 3),
                  "original_sizes": (k, 2), "pixel_transform": (k, 3, 3)}
        for key, arr in list(given.items()) + list(rows.items()):
            if arr is not None and np.shape(arr) != expect.get(key, (k, self.height, self.width)):
                raise ValueError(f"write_views: {key}: expected shape {expect.get(key, (k, self.height, self.width))}, "
                                 f"got {np.shape(arr)}")
        for key, arr in given.items():
            if arr is not None:
                self.maps[key][start:start + k] = arr
                if flush:
                    self.maps[key].flush()
        for key, arr in rows.items():
            if arr is None:
                continue
            if self.cameras[key] is None:  # pixel_transform: made on first use
                self.cameras[key] = np.zeros((self.num_views, 3, 3))
            self.cameras[key][start:start + k] = arr
        self.written[start:start + k] = True

    def add_gaussians(self, *, means: np.ndarray, scales: np.ndarray, rotations: np.ndarray, harmonics: np.ndarray,
                      opacities: np.ndarray, view: Optional[np.ndarray] = None) -> None:
        """Append Gaussians (a chunk of any size; ``view`` given for every chunk or for none)."""
        self._check_open()
        means = np.asarray(means, np.float32)
        g = len(means)
        harmonics = np.asarray(harmonics, np.float32)
        parts = {"means": (means, (g, 3)), "scales": (scales, (g, 3)), "rotations": (rotations, (g, 4)),
                 "harmonics": (harmonics, (g, 3, harmonics.shape[-1] if harmonics.ndim == 3 else -1)),
                 "opacities": (opacities, (g,)), "view": (view, (g,))}
        if self._gs_view is not None and self._gs_view != (view is not None):
            raise ValueError("add_gaussians: give view for every chunk or for none")
        k = harmonics.shape[-1] if harmonics.ndim == 3 else -1
        if self._gs_k is not None and k != self._gs_k:
            raise ValueError(f"add_gaussians: harmonics: {k} coefficients, earlier chunks had {self._gs_k}")
        for name, (arr, shape) in parts.items():
            if arr is not None and np.shape(arr) != shape:
                raise ValueError(f"add_gaussians: {name}: expected shape {shape}, got {np.shape(arr)}")
        for name, (arr, _) in parts.items():
            if arr is not None:
                dtype = _DTYPES.get(f"gs_{name}", np.float32)
                with open(self.tmp / f"gs_{name}.part", "ab") as fh:
                    fh.write(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        self._gs_k, self._gs_view = k, view is not None
        self._gs_count = (self._gs_count or 0) + g

    def finish(self, *, image_names: Optional[Iterable[str]] = None, is_metric: bool = False, model: str = "",
               options: Any = None) -> Path:
        """Write the cameras, the Gaussians and ``scene.json``; rename the folder onto ``path``."""
        self._check_open()
        missing = np.flatnonzero(~self.written)
        if len(missing):
            raise ValueError(f"{self.path}: views {', '.join(map(str, missing[:10]))}"
                             f"{' ...' if len(missing) > 10 else ''} were never written")
        names = [f"view_{i:04d}" for i in range(self.num_views)] if image_names is None else list(image_names)
        if len(names) != self.num_views:
            raise ValueError(f"image_names: expected {self.num_views} names, got {len(names)}")
        try:
            for mm in self.maps.values():
                mm.flush()
            self.maps.clear()  # close the maps before the rename
            cams = dict(self.cameras)
            if cams["pixel_transform"] is None:
                pt = np.zeros((self.num_views, 3, 3))
                pt[:, 0, 0] = self.width / cams["original_sizes"][:, 1]
                pt[:, 1, 1] = self.height / cams["original_sizes"][:, 0]
                pt[:, 2, 2] = 1.0
                cams["pixel_transform"] = pt
            for key, arr in cams.items():
                np.save(self.tmp / f"{key}.npy", np.ascontiguousarray(arr, dtype=_DTYPES[key]))
            if self._gs_count is not None:
                self._join_gaussians()
            _write_header_json(self.tmp, header_of(names, is_metric, model, options))
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._folder.__exit__(None, None, None)
        return self.path

    def _join_gaussians(self) -> None:
        g = self._gs_count
        shapes = {"means": (g, 3), "scales": (g, 3), "rotations": (g, 4), "harmonics": (g, 3, self._gs_k),
                  "opacities": (g,), "view": (g,)}
        for name, shape in shapes.items():
            part = self.tmp / f"gs_{name}.part"
            if name == "view" and not self._gs_view:
                continue
            dtype = np.dtype(_DTYPES.get(f"gs_{name}", np.float32))
            with open(self.tmp / f"gs_{name}.npy", "wb") as out, open(part, "rb") as src:
                np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                           "fortran_order": False, "shape": shape})
                shutil.copyfileobj(src, out, 1 << 24)
            part.unlink()

    def abort(self) -> None:
        """Remove the temporary folder (the target, if it existed, is untouched)."""
        if self._open:
            self._open = False
            self.maps.clear()
            self._folder.__exit__(RuntimeError, RuntimeError("aborted"), None)


def write_folder(path: PathLike, header: Dict[str, Any], arrays: Dict[str, np.ndarray],
                 block: int = 64) -> Path:
    """A whole scene folder from arrays, atomically, through :class:`SceneWriter` (so both give
    the same files); ``block`` views at a time, so memory-mapped input stays on disk."""
    n, h, w = arrays["images"].shape[:3]
    with SceneWriter(path, n, h, w, conf="conf" in arrays, sky="sky" in arrays) as sw:
        for s in range(0, n, block):
            rows = {k: arrays[k][s:s + block] for k in VIEW_ARRAYS + CAMERA_ARRAYS if k in arrays}
            sw.write_views(s, flush=False, **rows)
        if "gs_means" in arrays:
            gs = {f: arrays.get(f"gs_{f}") for f in GAUSSIAN_FIELDS}
            step = 1 << 20
            for s in range(0, max(len(gs["means"]), 1), step):  # an empty set too
                sw.add_gaussians(**{f: (None if a is None else a[s:s + step]) for f, a in gs.items()})
        return sw.finish(image_names=header["image_names"], is_metric=header["is_metric"], model=header["model"],
                         options=header["options"])


# ---------------------------------------------------------------------------------- reading


def read_scene(path: PathLike, mmap: bool = True) -> Tuple[Path, Dict[str, Any], Dict[str, np.ndarray]]:
    """``(scene path, header, arrays)`` of a scene file or folder, schema and version checked and
    the required arrays present; raises :class:`SceneFileError` naming the file."""
    given = Path(path)
    path = given.parent if given.name == SCENE_JSON and given.is_file() else given
    if path.is_dir():
        header, arrays = _read_folder(path, mmap)
    elif path.is_file():
        header, arrays = _read_npz(path)
    else:
        raise SceneFileError(f"{path}: no such scene file or folder")
    if header.get("schema") != SCHEMA_NAME:
        raise SceneFileError(f"{path}: not a da3-plugins scene file (schema {header.get('schema') or 'missing'!r})")
    try:
        version = int(header.get("schema_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version > SCHEMA_VERSION:
        raise SceneFileError(f"{path}: scene file schema version {version} is newer than this da3-plugins reads "
                             f"({SCHEMA_VERSION}); upgrade da3-plugins")
    if version < 1:
        raise SceneFileError(f"{path}: bad schema version {header.get('schema_version')!r}")
    for key in REQUIRED_ARRAYS:
        if key not in arrays:
            where = f" (no {key}.npy)" if path.is_dir() else ""
            raise SceneFileError(f"{path}: the array {key!r} is missing{where}")
    return path, header, arrays


def _read_npz(path: Path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise SceneFileError(f"{path}: not a readable .npz scene file ({exc})") from None
    try:
        options = json.loads(str(values.get("options_json", "{}")))
    except ValueError as exc:
        raise SceneFileError(f"{path}: options_json is not JSON ({exc})") from None
    header = {"schema": str(values.get("schema", "")), "schema_version": values.get("schema_version", -1),
              "image_names": [str(x) for x in values.get("image_names", [])],
              "is_metric": bool(values.get("is_metric", False)), "model": str(values.get("model", "")),
              "options": options}
    return header, {k: v for k, v in values.items() if k in ARRAY_KEYS}


def _read_folder(path: Path, mmap: bool) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    meta = path / SCENE_JSON
    if not meta.is_file():
        raise SceneFileError(f"{path}: not a da3-plugins scene folder (no {SCENE_JSON})")
    try:
        header = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SceneFileError(f"{meta}: not readable JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SceneFileError(f"{meta}: expected a JSON object")
    names = header.get("image_names", [])
    if not isinstance(names, list) or not isinstance(header.get("options", {}), dict):
        raise SceneFileError(f"{meta}: image_names must be a list and options an object")
    header = {"schema": header.get("schema", ""), "schema_version": header.get("schema_version", -1),
              "image_names": [str(x) for x in names], "is_metric": bool(header.get("is_metric", False)),
              "model": str(header.get("model", "")), "options": header.get("options", {})}
    arrays: Dict[str, np.ndarray] = {}
    for key in ARRAY_KEYS:
        file = path / f"{key}.npy"
        if not file.is_file():
            continue
        try:
            arrays[key] = np.load(file, mmap_mode="r" if mmap and key not in CAMERA_ARRAYS else None,
                                  allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise SceneFileError(f"{file}: not a readable .npy array ({exc})") from None
    return header, arrays


# ---------------------------------------------------------------------------------- helpers


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"option value {obj!r} is not JSON-serialisable")


class atomic_path:
    """Context manager yielding a temporary path beside ``path``; renamed onto it on success,
    removed on any error (so an interrupted write leaves nothing behind)."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        else:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
        return False


class atomic_folder:
    """Context manager yielding a temporary folder beside ``path``; on success it replaces
    ``path`` (an existing folder only with ``overwrite``), on any error it is removed."""

    def __init__(self, path: PathLike, overwrite: bool = True) -> None:
        self.path = Path(path)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(f"{self.path}: exists (pass overwrite=True to replace it)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        os.chmod(self.tmp, 0o755)
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        return False


__all__ = ["ARRAY_KEYS", "SCENE_JSON", "SCHEMA_NAME", "SCHEMA_VERSION", "SceneFileError", "SceneWriter",
           "atomic_folder", "atomic_path", "find_scene", "is_scene_folder", "read_scene", "save_target",
           "write_folder", "write_npz"]
