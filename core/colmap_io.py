"""Read COLMAP sparse models (binary or text), numpy + stdlib only.

    model = read_colmap_model("project/sparse/0")
    cam = model.cameras[model.images[1].camera_id]
    k = cam.intrinsics()                      # (3, 3) pixels, our convention unchanged
    w2c = model.images[1].world_to_camera()   # (3, 4) OpenCV world-to-camera

Format (COLMAP's documented output format; the project's writer
:mod:`core.export.colmap` writes the same), all little-endian:

* ``cameras.bin``: uint64 count; per camera int32 id, int32 model id, uint64 width, uint64
  height, float64 params[n(model)].
* ``images.bin``: uint64 count; per image int32 id, float64 qvec[4] (w x y z), float64
  tvec[3], int32 camera id, the name (UTF-8, NUL-terminated), uint64 K, then K times
  (float64 x, float64 y, int64 point3D id; -1 -- or 2^64-1 -- for none).
* ``points3D.bin``: uint64 count; per point uint64 id, float64 xyz[3], uint8 rgb[3], float64
  error, uint64 track length L, then L times (int32 image id, int32 point2D index).
* The ``.txt`` files hold the same, one camera / point per line and two lines per image (the
  second one, the observations, may be empty); ``#`` lines are comments.

Conventions: COLMAP poses are OpenCV world-to-camera (``x_cam = R x_world + t``), and its
pixel coordinates are continuous with the centre of the top-left pixel at (0.5, 0.5) -- ours
too, so K and the observations ``xys`` are used unchanged.

Newer COLMAP versions also write ``rigs`` and ``frames`` files; they are not needed (the
image files still hold each image's own pose) and are not read.  Every problem with the
input raises ``ValueError`` with one line naming the file.
"""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np

from .errors import DatasetError

PathLike = Union[str, os.PathLike]

#: COLMAP camera models: id -> (name, number of parameters), as in COLMAP's ``models.h``
CAMERA_MODELS: Dict[int, Tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
    12: ("SIMPLE_DIVISION", 4),
    13: ("DIVISION", 5),
    14: ("SIMPLE_FISHEYE", 3),
    15: ("FISHEYE", 4),
    16: ("EUCM", 6),
    17: ("EQUIRECTANGULAR", 2),
}
_MODEL_PARAMS: Dict[str, int] = {name: n for name, n in CAMERA_MODELS.values()}

#: models whose K is read (distortion, if any, is ignored with a warning):
#: name -> (index of fx, index of fy, index of cx, index of cy, first distortion index)
_PINHOLE_LIKE: Dict[str, Tuple[int, int, int, int, int]] = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2, 3),
    "PINHOLE": (0, 1, 2, 3, 4),
    "SIMPLE_RADIAL": (0, 0, 1, 2, 3),
    "RADIAL": (0, 0, 1, 2, 3),
    "OPENCV": (0, 1, 2, 3, 4),
}

_NAMES = ("cameras", "images", "points3D")


@dataclass
class ColmapCamera:
    """One COLMAP camera: ``model`` is the model name (``"PINHOLE"``, ...), ``params`` its
    parameters in COLMAP's order, ``source`` the file it came from (for messages)."""

    id: int
    model: str
    width: int
    height: int
    params: np.ndarray
    source: str = ""

    def intrinsics(self) -> np.ndarray:
        """(3, 3) float64 K in pixels of a ``width`` x ``height`` image, continuous coordinates
        (COLMAP's convention and ours: no half-pixel shift).

        PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV are read; their distortion is
        ignored (a warning names the model when it is non-zero: undistort the images first
        with ``colmap image_undistorter`` for exact geometry).

        Raises:
            ValueError: any other camera model (fisheye, ...).
        """
        if self.model not in _PINHOLE_LIKE:
            raise DatasetError(f"{self.source or 'cameras'}: camera {self.id} has model {self.model}, which is not "
                             f"supported (use {', '.join(_PINHOLE_LIKE)}; undistort with colmap image_undistorter)")
        ifx, ify, icx, icy, idist = _PINHOLE_LIKE[self.model]
        p = np.asarray(self.params, np.float64)
        dist = p[idist:]
        if np.any(dist != 0):
            warnings.warn(f"{self.source or 'cameras'}: camera {self.id} is {self.model} with non-zero distortion "
                          f"{[float(x) for x in dist]}; the distortion is ignored", stacklevel=2)
        return np.array([[p[ifx], 0.0, p[icx]], [0.0, p[ify], p[icy]], [0.0, 0.0, 1.0]])


@dataclass
class ColmapImage:
    """One registered COLMAP image: pose (``qvec`` w x y z, ``tvec``) world-to-camera, and its
    2-D points ``xys`` (K, 2) with ``point3D_ids`` (K,) int64 (-1: not a 3-D point)."""

    id: int
    camera_id: int
    name: str
    qvec: np.ndarray
    tvec: np.ndarray
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def rotation(self) -> np.ndarray:
        """(3, 3) world-to-camera rotation from the (normalised) quaternion."""
        q = np.asarray(self.qvec, np.float64)
        w, x, y, z = q / np.linalg.norm(q)
        return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

    def world_to_camera(self) -> np.ndarray:
        """(3, 4) float64 OpenCV world-to-camera ``[R | t]`` (COLMAP's own convention)."""
        return np.concatenate([self.rotation(), np.asarray(self.tvec, np.float64).reshape(3, 1)], 1)


@dataclass
class ColmapModel:
    """A COLMAP sparse model.  ``points`` (P, 3) float64, ``point_ids`` (P,) int64 and
    ``colors`` (P, 3) uint8 are in file order; ``path`` is the folder read."""

    cameras: Dict[int, ColmapCamera]
    images: Dict[int, ColmapImage]
    points: np.ndarray
    point_ids: np.ndarray
    colors: np.ndarray
    path: str = ""
    _order: Union[np.ndarray, None] = field(default=None, init=False, repr=False, compare=False)

    def point_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows into ``points`` of the 3-D point ids ``ids`` (any shape); -1 where an id is
        invalid (negative) or not in the model."""
        ids = np.asarray(ids, np.int64)
        out = np.full(ids.shape, -1, np.int64)
        if len(self.point_ids) == 0 or ids.size == 0:
            return out
        if self._order is None or len(self._order) != len(self.point_ids):
            self._order = np.argsort(self.point_ids, kind="stable")
        order = self._order
        sorted_ids = self.point_ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        hit = (sorted_ids[pos] == ids) & (ids >= 0)
        out[hit] = order[pos[hit]]
        return out


# ------------------------------------------------------------------------------ entry point


def model_format(folder: PathLike) -> Union[str, None]:
    """``"bin"`` or ``"txt"`` when ``folder`` holds all three model files in that form (binary
    preferred), else None."""
    folder = Path(folder)
    for ext in ("bin", "txt"):
        if all((folder / f"{n}.{ext}").is_file() for n in _NAMES):
            return ext
    return None


def read_colmap_model(folder: PathLike) -> ColmapModel:
    """Read ``cameras``, ``images`` and ``points3D`` (``.bin`` preferred, else ``.txt``).

    Raises:
        ValueError: a missing file, a truncated or malformed file, an unknown camera model, an
            image of an unknown camera -- one line naming the file.
    """
    folder = Path(folder)
    ext = model_format(folder)
    if ext is None:
        any_bin = any((folder / f"{n}.bin").exists() for n in _NAMES)
        want = "bin" if any_bin else "txt"
        missing = next(folder / f"{n}.{want}" for n in _NAMES if not (folder / f"{n}.{want}").is_file())
        raise DatasetError(f"{missing}: missing (a COLMAP model needs cameras, images and points3D, "
                         f"all .bin or all .txt)")
    files = {n: folder / f"{n}.{ext}" for n in _NAMES}
    if ext == "bin":
        cameras = _guard(files["cameras"], _cameras_bin)
        images = _guard(files["images"], _images_bin)
        ids, xyz, rgb = _guard(files["points3D"], _points_bin)
    else:
        cameras = _guard(files["cameras"], _cameras_txt)
        images = _guard(files["images"], _images_txt)
        ids, xyz, rgb = _guard(files["points3D"], _points_txt)
    for cam in cameras.values():
        cam.source = str(files["cameras"])
    for img in images.values():
        if img.camera_id not in cameras:
            raise DatasetError(f"{files['images']}: image {img.id} ({img.name}) uses camera {img.camera_id}, "
                             f"which {files['cameras'].name} does not have")
    if len(np.unique(ids)) != len(ids):
        raise DatasetError(f"{files['points3D']}: repeated 3-D point ids")
    return ColmapModel(cameras=cameras, images=images, points=xyz, point_ids=ids, colors=rgb, path=str(folder))


class _Malformed(Exception):
    """A problem inside one file; turned into ``ValueError`` naming the file by :func:`_guard`."""


def _guard(path: Path, parse):
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return parse(data)
    except _Malformed as e:
        raise DatasetError(f"{path}: {e}") from None
    except (struct.error, UnicodeDecodeError, IndexError, ValueError, OverflowError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{path}: malformed ({msg})") from None


# ------------------------------------------------------------------------------ shared checks


def _camera(cam_id: int, model: str, width: int, height: int, params: List[float]) -> ColmapCamera:
    p = np.asarray(params, np.float64)
    if width < 1 or height < 1:
        raise _Malformed(f"camera {cam_id}: bad size {width} x {height}")
    if not np.all(np.isfinite(p)):
        raise _Malformed(f"camera {cam_id}: non-finite parameters")
    return ColmapCamera(id=cam_id, model=model, width=width, height=height, params=p)


def _image(img_id: int, qvec, tvec, cam_id: int, name: str, xys: np.ndarray, ids: np.ndarray) -> ColmapImage:
    q = np.asarray(qvec, np.float64)
    t = np.asarray(tvec, np.float64)
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(t))) or not np.linalg.norm(q) > 0:
        raise _Malformed(f"image {img_id} ({name}): bad pose qvec={q.tolist()} tvec={t.tolist()}")
    if not name:
        raise _Malformed(f"image {img_id}: empty name")
    return ColmapImage(id=img_id, camera_id=cam_id, name=name, qvec=q, tvec=t, xys=xys, point3D_ids=ids)


def _put(table: dict, key: int, value, what: str) -> None:
    if key in table:
        raise _Malformed(f"{what} {key} appears twice")
    table[key] = value


# ------------------------------------------------------------------------------ binary


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(f"truncated (needs {n} more bytes at offset {self.pos}, file has {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def count(self, what: str, item_bytes: int) -> int:
        (n,) = self.unpack("<Q")
        if n * item_bytes > len(self.data) - self.pos:  # also catches garbage counts early
            raise _Malformed(f"truncated ({n} {what} announced, only {len(self.data) - self.pos} bytes left)")
        return n

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise _Malformed(f"truncated (unterminated image name at offset {self.pos})")
        out = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return out

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise _Malformed(f"{len(self.data) - self.pos} unexpected bytes after the last record")


def _cameras_bin(data: bytes) -> Dict[int, ColmapCamera]:
    r = _Reader(data)
    out: Dict[int, ColmapCamera] = {}
    for _ in range(r.count("cameras", 24)):
        cam_id, model_id, width, height = r.unpack("<iiQQ")
        if model_id not in CAMERA_MODELS:
            raise _Malformed(f"camera {cam_id}: unknown camera model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        _put(out, cam_id, _camera(cam_id, name, width, height, list(r.unpack(f"<{n}d"))), "camera")
    r.finish()
    return out


_P2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def _images_bin(data: bytes) -> Dict[int, ColmapImage]:
    r = _Reader(data)
    out: Dict[int, ColmapImage] = {}
    for _ in range(r.count("images", 73)):
        img_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.unpack("<i4d3di")
        name = r.cstring()
        k = r.count("2-D points", _P2D.itemsize)
        rows = np.frombuffer(r.take(k * _P2D.itemsize), _P2D)
        xys = np.stack([rows["x"], rows["y"]], 1).astype(np.float64)
        ids = rows["id"].astype(np.int64)
        ids[ids < 0] = -1  # 2^64 - 1 (COLMAP's invalid id) reads as -1
        _put(out, img_id, _image(img_id, (qw, qx, qy, qz), (tx, ty, tz), cam_id, name, xys, ids), "image")
    r.finish()
    return out


_POINT_HEAD = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3), ("err", "<f8"), ("len", "<u8")])


def _points_bin(data: bytes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = _Reader(data)
    n = r.count("points", _POINT_HEAD.itemsize)
    # records have variable length (the track: L times int32 image id, int32 point2D index):
    # one pass finds where each starts, numpy then reads every fixed-size head at once
    starts: List[int] = []
    pos, size, track_len = r.pos, len(data), struct.Struct("<Q").unpack_from
    head = _POINT_HEAD.itemsize
    for _ in range(n):
        if pos + head > size:
            raise _Malformed(f"truncated (point record at offset {pos} needs {head} bytes, file has {size})")
        starts.append(pos)
        (length,) = track_len(data, pos + head - 8)
        pos += head + 8 * length
    if pos > size:
        raise _Malformed(f"truncated (the last track ends at offset {pos}, file has {size})")
    r.pos = pos
    r.finish()
    buf = np.frombuffer(data, np.uint8)
    rows = buf[np.asarray(starts, np.int64)[:, None] + np.arange(head)].reshape(-1).view(_POINT_HEAD)
    return rows["id"].astype(np.int64), rows["xyz"].astype(np.float64).reshape(-1, 3), \
        rows["rgb"].astype(np.uint8).reshape(-1, 3)


# ------------------------------------------------------------------------------ text


def _data_lines(data: bytes):
    """(line number, text) of every line, comments included (callers skip them)."""
    text = data.decode("utf-8")
    return [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]


def _cameras_txt(data: bytes) -> Dict[int, ColmapCamera]:
    out: Dict[int, ColmapCamera] = {}
    for no, line in _data_lines(data):
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 4:
            raise _Malformed(f"line {no}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., got {line!r}")
        try:
            cam_id, model, width, height = int(f[0]), f[1], int(f[2]), int(f[3])
            params = [float(x) for x in f[4:]]
        except ValueError:
            raise _Malformed(f"line {no}: not numbers where expected: {line!r}") from None
        if model not in _MODEL_PARAMS:
            raise _Malformed(f"line {no}: unknown camera model {model!r}")
        if len(params) != _MODEL_PARAMS[model]:
            raise _Malformed(f"line {no}: {model} needs {_MODEL_PARAMS[model]} parameters, got {len(params)}")
        try:
            _put(out, cam_id, _camera(cam_id, model, width, height, params), "camera")
        except _Malformed as e:
            raise _Malformed(f"line {no}: {e}") from None
    return out


def _images_txt(data: bytes) -> Dict[int, ColmapImage]:
    out: Dict[int, ColmapImage] = {}
    lines = _data_lines(data)
    i = 0
    while i < len(lines):
        no, line = lines[i]
        i += 1
        if not line or line.startswith("#"):
            continue
        # the next line (even an empty one) holds this image's 2-D points
        points = lines[i][1] if i < len(lines) else ""
        i += 1
        f = line.split(maxsplit=9)
        if len(f) < 10:
            raise _Malformed(f"line {no}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {line!r}")
        try:
            img_id, cam_id = int(f[0]), int(f[8])
            q = [float(x) for x in f[1:5]]
            t = [float(x) for x in f[5:8]]
            vals = points.split()
            if len(vals) % 3:
                raise _Malformed(f"line {no + 1}: 2-D points must come in triples X Y POINT3D_ID")
            xys = np.array([[float(vals[j]), float(vals[j + 1])] for j in range(0, len(vals), 3)],
                           np.float64).reshape(-1, 2)
            ids = np.array([int(vals[j + 2]) for j in range(0, len(vals), 3)], np.int64)
        except ValueError:
            raise _Malformed(f"line {no}: not numbers where expected") from None
        ids[ids < 0] = -1
        try:
            _put(out, img_id, _image(img_id, q, t, cam_id, f[9], xys, ids), "image")
        except _Malformed as e:
            raise _Malformed(f"line {no}: {e}") from None
    return out


def _points_txt(data: bytes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids: List[int] = []
    xyz: List[Tuple[float, float, float]] = []
    rgb: List[Tuple[int, int, int]] = []
    for no, line in _data_lines(data):
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 8 or (len(f) - 8) % 2:
            raise _Malformed(f"line {no}: expected POINT3D_ID X Y Z R G B ERROR TRACK[] pairs, got {line[:80]!r}")
        try:
            ids.append(int(f[0]))
            xyz.append((float(f[1]), float(f[2]), float(f[3])))
            c = (int(f[4]), int(f[5]), int(f[6]))
        except ValueError:
            raise _Malformed(f"line {no}: not numbers where expected") from None
        if not all(0 <= v <= 255 for v in c):
            raise _Malformed(f"line {no}: colour {c} outside 0..255")
        rgb.append(c)
    return (np.array(ids, np.int64), np.array(xyz, np.float64).reshape(-1, 3), np.array(rgb, np.uint8).reshape(-1, 3))
