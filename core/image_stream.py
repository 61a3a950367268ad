"""Reading one view at a time: file headers, full decodes, video frames in order.

The layer under :mod:`.images` (which re-exports what users need): :func:`scan_file` reads a
photo's header only (upright size, EXIF orientation, the limits), :func:`decode_file` decodes
it exactly as ``images.load_image_file`` does, :func:`scan_video` plans a video's sampled
frames without decoding them all, and a :class:`FrameReader` decodes views one after another
(a video's frames in order, each decoded once).  Every failure is a one-line
:class:`ImageInputError` naming the file.
"""

from __future__ import annotations

import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import UserInputError

MIN_SIDE = 14  # one ViT patch: anything smaller cannot be processed meaningfully
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's decompression-bomb error limit (2x MAX_IMAGE_PIXELS)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the photo by 90 degrees


class ImageInputError(UserInputError):
    """Input that cannot be read as photos (the message names the file or argument)."""


@dataclass(frozen=True)
class ImageRef:
    """One view, not decoded: ``name`` (unique, for output files), ``source`` (the path,
    ``"path#frame"`` for a video frame, ``"PIL"`` or ``"array"``), ``size_hw`` upright
    (height, width), ``kind`` ``"file"`` | ``"video"`` | ``"memory"`` and the video ``frame``.
    A ``"memory"`` view keeps its converted (H, W, 3) uint8 pixels (they were in memory anyway)."""

    name: str
    source: str
    size_hw: Tuple[int, int]
    kind: str
    frame: Optional[int] = None
    _pixels: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def path(self) -> Optional[str]:
        """The file of a ``"file"`` or ``"video"`` view (None for in-memory views)."""
        if self.kind == "file":
            return self.source
        if self.kind == "video":
            return self.source.rsplit("#", 1)[0]
        return None


def to_rgb_array(img: Image.Image, name: str = "image") -> np.ndarray:
    """Any PIL mode -> (H, W, 3) uint8 RGB.

    16-bit and 32-bit integer images are scaled by their bit depth (PIL's own conversion
    would clip them), float images are taken as 0..1, CMYK and palette go through PIL.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16)
        gray = (arr >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, -1)
    if mode == "I":
        arr = np.asarray(img, dtype=np.int64)
        top = 65535 if arr.max(initial=0) > 255 else 255
        gray = np.clip(arr * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, -1)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        gray = (np.clip(np.nan_to_num(arr), 0, 1) * 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, -1)
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


# ----------------------------------------------------------------------------- photo files

@contextmanager
def _reading(path, bomb_warnings_are_errors: bool = True):
    """PIL's failures on ``path`` -> one-line :class:`ImageInputError` naming it.  The
    warnings filter is process-wide, so only the scan (one thread) turns warnings to errors."""
    try:
        if bomb_warnings_are_errors:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        else:
            yield
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{path}: too many pixels ({exc}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated or corrupt image" if "truncated" in str(exc).lower() else f"not a readable image ({exc})"
        raise ImageInputError(f"{path}: {reason}") from None


def check_file(path: Path) -> None:
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, expected an image file")


def _png_trailing_exif(path) -> Optional[bytes]:
    """An eXIf chunk after the image data of a PNG (PIL sees those only once it decodes),
    found by walking the chunk headers without reading the image data."""
    found = None
    with open(path, "rb") as fp:
        fp.seek(8)
        while True:
            head = fp.read(8)
            if len(head) < 8:
                return found
            length, cid = struct.unpack(">I4s", head)
            if cid == b"IEND":
                return found
            if cid == b"eXIf":
                found = b"Exif\x00\x00" + fp.read(length)
                fp.seek(4, 1)
            else:
                fp.seek(length + 4, 1)


def _orientation(im: Image.Image, path) -> int:
    """The EXIF orientation ``ImageOps.exif_transpose`` will apply, read without decoding
    (PNG's own ``getexif`` decodes the whole image first; the base method does not)."""
    orientation = Image.Image.getexif(im).get(ExifTags.Base.Orientation)
    if orientation is None and im.format == "PNG" and "exif" not in im.info:
        data = _png_trailing_exif(path)
        if data is not None:
            exif = Image.Exif()
            exif.load(data)
            orientation = exif.get(ExifTags.Base.Orientation)
    return orientation if isinstance(orientation, int) else 1


def scan_file(path: Path, max_pixels: int) -> Tuple[int, int]:
    """Upright (h, w) of an image file from its header; every check of ``images.load_image_file``
    that needs no pixels (empty, unknown format, pixel limit, too small)."""
    check_file(path)
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path}: the file is empty (0 bytes)")
    with _reading(path):
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageInputError(
                    f"{path}: {w}x{h} pixels is more than the limit of {max_pixels} "
                    "(a decompression bomb?); downscale it first")
            if _orientation(im, path) in _SWAPPING_ORIENTATIONS:
                w, h = h, w
    check_hw(h, w, str(path))
    return h, w


def decode_file(path, draft: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Full decode of a scanned file, upright RGB uint8.  ``draft`` (w, h): let a JPEG decode
    at the smallest DCT scale that is still at least that large (PIL ``Image.draft``)."""
    with _reading(path, bomb_warnings_are_errors=False):
        with Image.open(path) as im:
            if draft is not None and im.format in ("JPEG", "MPO"):
                if _orientation(im, path) in _SWAPPING_ORIENTATIONS:
                    draft = (draft[1], draft[0])
                im.draft("RGB", draft)
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return to_rgb_array(im, str(path))


def check_hw(h: int, w: int, what: str) -> None:
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageInputError(f"{what}: {w}x{h} pixels is too small (at least {MIN_SIDE}x{MIN_SIDE} needed)")


def check_size(pixels: np.ndarray, what: str) -> None:
    check_hw(pixels.shape[0], pixels.shape[1], what)


# ----------------------------------------------------------------------------- videos

def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a dependency
        raise ImageInputError("reading videos needs opencv-python-headless") from None
    return cv2


def count_frames(path: Path) -> int:
    """Frames in a video without decoding them: OpenCV's raw-stream mode counts packets
    (CAP_PROP_FRAME_COUNT is only the container's estimate).  Falls back to ``grab()``
    (decodes, no colour conversion) where raw mode is unavailable."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if cap.isOpened() and cap.get(cv2.CAP_PROP_FORMAT) == -1:
            n = 0
            while cap.grab():
                n += 1
            if n:
                return n
    finally:
        cap.release()
    cap = cv2.VideoCapture(str(path))
    try:
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def sample_frames(count: int, native_fps: float, fps: Optional[float]) -> List[int]:
    """Indices of the frames kept when a ``native_fps`` video of ``count`` frames is sampled at
    ``fps`` frames per second (None, or an unknown native rate: every frame)."""
    step = 1.0 if (fps is None or native_fps <= 0) else max(native_fps / fps, 1.0)
    indices: List[int] = []
    next_take = 0.0
    for index in range(count):
        if index + 1e-6 >= next_take:
            indices.append(index)
            next_take += step
    return indices


def check_fps(fps: Optional[float]) -> None:
    if fps is not None and fps <= 0:
        raise ImageInputError(f"--fps: expected a positive number, got {fps}")


def scan_video(path: Path, fps: Optional[float]) -> Tuple[List[int], Tuple[int, int]]:
    """The sampled frame indices of a video and its frame size (h, w), decoding one frame."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ImageInputError(f"{path}: not a readable video")
        native = cap.get(cv2.CAP_PROP_FPS) or 0.0
        ok, frame = cap.read()
        if not ok:
            raise ImageInputError(f"{path}: no frames could be read from the video")
        h, w = frame.shape[:2]
    finally:
        cap.release()
    check_hw(h, w, f"{path} frame 0")
    return sample_frames(count_frames(path), native, fps), (h, w)


def video_frame_rate(path: Path) -> float:
    """The native frames per second a video declares (0.0 when it declares none)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
    finally:
        cap.release()
    return rate if rate > 0 and rate < 1e4 else 0.0


class FrameReader:
    """Decodes views one after another (:meth:`read`), keeping a video open between its
    frames: the frames of one video read in increasing order are each decoded once.  One
    reader per thread; use it as a context manager (or call :meth:`close`)."""

    def __init__(self):
        self._video: Optional[str] = None
        self._cap = None
        self._pos = 0

    def read(self, ref: ImageRef, draft: Optional[Tuple[int, int]] = None) -> np.ndarray:
        """(H, W, 3) uint8 upright RGB of ``ref`` (``draft``: see :func:`read_image`)."""
        if ref.kind == "memory":
            return ref._pixels
        if ref.kind == "file":
            return decode_file(ref.source, draft)
        if ref.kind != "video":
            raise ValueError(f"{ref.name}: unknown view kind {ref.kind!r}")
        return self._read_frame(ref.path, ref.frame)

    def _read_frame(self, path: str, index: int) -> np.ndarray:
        cv2 = _cv2()
        if self._cap is None or self._video != path or index < self._pos:
            self.close()
            self._cap, self._video, self._pos = cv2.VideoCapture(path), path, 0
            if not self._cap.isOpened():
                raise ImageInputError(f"{path}: not a readable video")
        while self._pos < index:
            if not self._cap.grab():
                raise ImageInputError(f"{path}: the video ends after {self._pos} frames, before frame {index} "
                                      "(damaged, or changed since it was scanned?)")
            self._pos += 1
        ok, frame = self._cap.read()
        if not ok:
            raise ImageInputError(f"{path}: frame {index} cannot be read (damaged, or changed since it was scanned?)")
        self._pos += 1
        return np.ascontiguousarray(frame[..., ::-1])

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap, self._video, self._pos = None, None, 0

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
