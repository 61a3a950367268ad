"""Reading photos (files, folders, videos, PIL images, arrays) into RGB uint8 arrays.

Every failure is an :class:`ImageInputError` whose message names the file or argument and
says what to do; nothing here writes files.  Accepted and converted: grayscale, RGBA
(alpha dropped, as the official pipeline does), palette, CMYK, 16-bit and float images;
EXIF-rotated photos are turned upright.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from .errors import UserInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
MIN_SIDE = 14  # one ViT patch: anything smaller cannot be processed meaningfully
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's decompression-bomb error limit (2x MAX_IMAGE_PIXELS)

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


class ImageInputError(UserInputError):
    """Input that cannot be read as photos (the message names the file or argument)."""


@dataclass
class LoadedImage:
    """One input photo: ``pixels`` (H, W, 3) uint8 RGB, upright; ``name`` for output files."""

    pixels: np.ndarray
    name: str
    source: str = ""

    @property
    def size_hw(self):
        return self.pixels.shape[0], self.pixels.shape[1]


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def is_video(path: Union[str, os.PathLike]) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Image files of a folder (not recursive), in natural order (img2 before img10)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not p.name.startswith(".")]
    return sorted(files, key=_natural_key)


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


def load_image_file(path: Union[str, os.PathLike], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Open one photo, upright (EXIF orientation applied), as RGB uint8."""
    path = Path(path)
    if not path.exists():
        raise ImageInputError(f"{path}: no such file")
    if path.is_dir():
        raise ImageInputError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise ImageInputError(f"{path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageInputError(
                        f"{path}: {w}x{h} pixels is more than the limit of {max_pixels} "
                        "(a decompression bomb?); downscale it first")
                im.load()
                im = ImageOps.exif_transpose(im)
                pixels = to_rgb_array(im, str(path))
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{path}: too many pixels ({exc}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated or corrupt image" if "truncated" in str(exc).lower() else f"not a readable image ({exc})"
        raise ImageInputError(f"{path}: {reason}") from None
    _check_size(pixels, str(path))
    return LoadedImage(pixels=pixels, name=path.stem, source=str(path))


def _check_size(pixels: np.ndarray, what: str) -> None:
    h, w = pixels.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageInputError(f"{what}: {w}x{h} pixels is too small (at least {MIN_SIDE}x{MIN_SIDE} needed)")


def from_array(arr: np.ndarray, name: str) -> LoadedImage:
    """(H, W), (H, W, 1|3|4) uint8 / uint16 / float array (RGB order) -> LoadedImage."""
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(np.nan_to_num(a), 0, 1) * 255).round().astype(np.uint8)
    else:
        raise ImageInputError(f"{name}: unsupported array dtype {a.dtype} (use uint8, uint16 or float in 0..1)")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    a = np.ascontiguousarray(a[..., :3])
    _check_size(a, name)
    return LoadedImage(pixels=a, name=name, source="array")


def read_video_frames(path: Union[str, os.PathLike], fps: Optional[float] = 2.0,
                      max_frames: Optional[int] = None) -> List[LoadedImage]:
    """Frames of a video sampled at ``fps`` frames per second (None: every frame)."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such video file")
    if fps is not None and fps <= 0:
        raise ImageInputError(f"--fps: expected a positive number, got {fps}")
    try:
        import cv2
    except ImportError:  # pragma: no cover - cv2 is a dependency
        raise ImageInputError(f"{path}: reading videos needs opencv-python-headless") from None
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ImageInputError(f"{path}: not a readable video")
        native = cap.get(cv2.CAP_PROP_FPS) or 0.0
        step = 1.0 if (fps is None or native <= 0) else max(native / fps, 1.0)
        frames: List[LoadedImage] = []
        index, next_take = 0, 0.0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index + 1e-6 >= next_take:
                rgb = np.ascontiguousarray(frame[..., ::-1])
                _check_size(rgb, f"{path} frame {index}")
                frames.append(LoadedImage(pixels=rgb, name=f"{path.stem}_{index:06d}", source=f"{path}#{index}"))
                next_take += step
                if max_frames is not None and len(frames) >= max_frames:
                    break
            index += 1
    finally:
        cap.release()
    if not frames:
        raise ImageInputError(f"{path}: no frames could be read from the video")
    return frames


def load_images(inputs: Union[ImageLike, Sequence[ImageLike]], *, fps: Optional[float] = 2.0,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> List[LoadedImage]:
    """Everything a user may pass as photos -> a list of upright RGB uint8 images.

    ``inputs``: one or several of: an image file, a folder of images (natural order; other
    files are skipped), a video file (sampled at ``fps``), a PIL image, an array.  A batch
    array (N, H, W, 3) is split into views.  Names are unique (suffixes added on clashes).
    """
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        items: List = [inputs]
    elif isinstance(inputs, np.ndarray):
        items = list(inputs) if inputs.ndim == 4 else [inputs]
    else:
        items = list(inputs)
    if not items:
        raise ImageInputError("images: no input images given")
    out: List[LoadedImage] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            p = Path(item)
            if p.is_dir():
                files = list_images(p)
                if not files:
                    raise ImageInputError(f"{p}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS[:5])} ...)")
                out.extend(load_image_file(f, max_pixels) for f in files)
            elif is_video(p):
                out.extend(read_video_frames(p, fps))
            else:
                out.append(load_image_file(p, max_pixels))
        elif isinstance(item, Image.Image):
            im = ImageOps.exif_transpose(item)
            pixels = to_rgb_array(im)
            _check_size(pixels, f"images[{i}]")
            out.append(LoadedImage(pixels=pixels, name=f"view_{i:04d}", source="PIL"))
        elif isinstance(item, np.ndarray):
            out.append(from_array(item, f"view_{i:04d}"))
        else:
            raise ImageInputError(f"images[{i}]: unsupported input type {type(item).__name__} "
                                  "(use a path, a folder, a video, a PIL image or an array)")
    _make_names_unique(out)
    return out


def _make_names_unique(images: Iterable[LoadedImage]) -> None:
    seen = {}
    for im in images:
        base = im.name
        if base in seen:
            seen[base] += 1
            im.name = f"{base}_{seen[base]}"
        else:
            seen[base] = 0
