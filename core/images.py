"""Reading photos (files, folders, videos, PIL images, arrays) into RGB uint8 arrays.

Every failure is an :class:`ImageInputError` whose message names the file or argument and
says what to do; nothing here writes files.  Accepted and converted: grayscale, RGBA
(alpha dropped, as the official pipeline does), palette, CMYK, 16-bit and float images;
EXIF-rotated photos are turned upright.

Memory that does not grow with the number of views, in two stages:

- :func:`scan_images` reads only headers (size, EXIF orientation, limits) and plans the
  sampled frames of videos: one :class:`ImageRef` per view, in input order, with the names
  :func:`load_images` gives.  A bad file fails here, before any pixel is decoded; with
  ``skip_unreadable`` it is listed in :attr:`ImageScan.skipped` instead.
- :func:`iter_processed` / :func:`load_processed` decode and resize the views a few at a time
  (a small thread pool), bit-identical to ``preprocess.process_images(load_images(...))``;
  :func:`read_image` decodes one view at full resolution.

:func:`load_images` is scan + full decode of every view (all in memory at once).  The
per-file and per-video reading lives in :mod:`.image_stream`.
"""

from __future__ import annotations

import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps

from .image_stream import (DEFAULT_MAX_PIXELS, MIN_SIDE, FrameReader, ImageInputError, ImageRef, check_file,
                           check_fps, check_size, scan_file, scan_video, decode_file, to_rgb_array,
                           video_frame_rate)
from .preprocess import ProcessedImage, check_method, crop_target, process_one, processed_size, resize_plan

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "MIN_SIDE", "VIDEO_EXTENSIONS", "FrameReader", "ImageInputError",
           "ImageRef", "ImageScan", "LoadedImage", "frame_source", "from_array", "is_video", "iter_processed", "list_images",
           "load_image_file", "load_images", "load_processed", "read_image", "read_video_frames", "scan_images",
           "stream_target", "to_rgb_array"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class LoadedImage:
    """One input photo: ``pixels`` (H, W, 3) uint8 RGB, upright; ``name`` for output files."""

    pixels: np.ndarray
    name: str
    source: str = ""

    @property
    def size_hw(self):
        return self.pixels.shape[0], self.pixels.shape[1]


@dataclass
class ImageScan:
    """What :func:`scan_images` found: ``refs`` in input order, and ``skipped`` (path, reason)
    of the files left out with ``skip_unreadable``."""

    refs: List[ImageRef]
    skipped: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def sizes(self) -> np.ndarray:
        """(N, 2) int64 upright (height, width) of every view."""
        return np.array([r.size_hw for r in self.refs], dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.refs)


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


def load_image_file(path: Union[str, os.PathLike], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Open one photo, upright (EXIF orientation applied), as RGB uint8."""
    path = Path(path)
    scan_file(path, max_pixels)
    return LoadedImage(pixels=decode_file(path), name=path.stem, source=str(path))


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
    check_size(a, name)
    return LoadedImage(pixels=a, name=name, source="array")


def _video_refs(path: Path, indices: Sequence[int], size_hw: Tuple[int, int]) -> List[ImageRef]:
    return [ImageRef(name=f"{path.stem}_{i:06d}", source=f"{path}#{i}", size_hw=size_hw, kind="video", frame=i)
            for i in indices]


_FRAME_NUMBER = re.compile(r"(\d+)$")


def frame_source(refs: Sequence[ImageRef]) -> dict:
    """Where the views come from, when they are frames of one piece of footage: the scene
    file's ``frame_source``, ``frame_source_kind``, ``frame_rate`` and ``frame_indices``
    (:class:`~.options.SceneOptions`); ``{}`` otherwise.

    Every view a frame of the same video: ``"video"``, its absolute path, the video's declared
    rate, the 0-based frame indices.  Every view (two at least) a file of one folder whose name
    ends in a number, the numbers increasing by one constant step (every frame, or every n-th):
    ``"image_sequence"``, the folder, rate 0 (unknown), the numbers.  (Photos named in camera
    order, ``IMG_0001.jpg`` ..., look like this too: the Blender import can be told to keep
    them separate.)"""
    if not refs:
        return {}
    if all(r.kind == "video" for r in refs):
        paths = {r.path for r in refs}
        if len(paths) != 1:
            return {}
        path = Path(next(iter(paths))).resolve()
        return {"frame_source": str(path), "frame_source_kind": "video", "frame_rate": video_frame_rate(path),
                "frame_indices": tuple(int(r.frame) for r in refs)}
    if all(r.kind == "file" for r in refs):
        folders = {str(Path(r.source).resolve().parent) for r in refs}
        numbers = [_FRAME_NUMBER.search(Path(r.source).stem) for r in refs]
        if len(folders) != 1 or not all(numbers):
            return {}
        values = [int(m.group(1)) for m in numbers]
        steps = {b - a for a, b in zip(values, values[1:])}
        if len(steps) != 1 or steps.pop() < 1:
            return {}
        return {"frame_source": folders.pop(), "frame_source_kind": "image_sequence", "frame_rate": 0.0,
                "frame_indices": tuple(values)}
    return {}


def read_video_frames(path: Union[str, os.PathLike], fps: Optional[float] = 2.0,
                      max_frames: Optional[int] = None) -> List[LoadedImage]:
    """Frames of a video sampled at ``fps`` frames per second (None: every frame)."""
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"{path}: no such video file")
    check_fps(fps)
    indices, size = scan_video(path, fps)
    refs = _video_refs(path, indices[:max_frames] if max_frames is not None else indices, size)
    with FrameReader() as reader:
        return [LoadedImage(pixels=reader.read(r), name=r.name, source=r.source) for r in refs]


def read_image(ref: ImageRef, *, draft: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Full decode of one view: (H, W, 3) uint8 upright RGB, the pixels :func:`load_images`
    gives.  Decode errors (e.g. data truncated after a good header) raise the one-line
    :class:`ImageInputError` naming the file.  A video frame is found by decoding the video
    from its start: for many frames use one :class:`FrameReader`.  ``draft`` (w, h), JPEG
    only and not exact: decode at the smallest DCT scale at least that large (faster)."""
    with FrameReader() as reader:
        return reader.read(ref, draft)


# ----------------------------------------------------------------------------- scan and load

def _as_items(inputs) -> list:
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        items: List = [inputs]
    elif isinstance(inputs, np.ndarray):
        items = list(inputs) if inputs.ndim == 4 else [inputs]
    else:
        items = list(inputs)
    if not items:
        raise ImageInputError("images: no input images given")
    return items


def _reason(exc: ImageInputError, path: Path) -> str:
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def scan_images(inputs: Union[ImageLike, Sequence[ImageLike]], *, fps: Optional[float] = 2.0,
                skip_unreadable: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageScan:
    """The views :func:`load_images` would give (same order, same unique names), from file
    headers only: no photo is decoded (a video decodes its first frame).

    A file whose header cannot be read (corrupt, not an image, empty, too small, too many
    pixels) and a video that cannot be read raise a one-line :class:`ImageInputError` naming
    it; with ``skip_unreadable`` they are left out and listed in ``skipped`` as (path, reason)
    instead, and only "nothing readable at all" raises.  A missing path, an empty folder and
    a bad ``fps`` always raise.  PIL images and arrays are converted now (kept in the refs).
    """
    entries: List[ImageRef] = []
    skipped: List[Tuple[str, str]] = []
    candidates = 0

    def attempt(path: Path, scan):
        nonlocal candidates
        candidates += 1
        try:
            return scan()
        except ImageInputError as exc:
            if not skip_unreadable:
                raise
            skipped.append((str(path), _reason(exc, path)))
            return None

    def add_file(path: Path) -> None:
        check_file(path)
        size = attempt(path, lambda: scan_file(path, max_pixels))
        if size is not None:
            entries.append(ImageRef(name=path.stem, source=str(path), size_hw=size, kind="file"))

    for i, item in enumerate(_as_items(inputs)):
        if isinstance(item, (str, os.PathLike)):
            p = Path(item)
            if p.is_dir():
                files = list_images(p)
                if not files:
                    raise ImageInputError(f"{p}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS[:5])} ...)")
                for f in files:
                    add_file(f)
            elif is_video(p):
                if not p.is_file():
                    raise ImageInputError(f"{p}: no such video file")
                check_fps(fps)
                plan = attempt(p, lambda: scan_video(p, fps))
                if plan is not None:
                    entries.extend(_video_refs(p, *plan))
            else:
                add_file(p)
        elif isinstance(item, Image.Image):
            candidates += 1
            pixels = to_rgb_array(ImageOps.exif_transpose(item))
            check_size(pixels, f"images[{i}]")
            entries.append(_memory_ref(pixels, f"view_{i:04d}", "PIL"))
        elif isinstance(item, np.ndarray):
            candidates += 1
            entries.append(_memory_ref(from_array(item, f"view_{i:04d}").pixels, f"view_{i:04d}", "array"))
        else:
            raise ImageInputError(f"images[{i}]: unsupported input type {type(item).__name__} "
                                  "(use a path, a folder, a video, a PIL image or an array)")
    if not entries:
        first = f"{skipped[0][0]}: {skipped[0][1]}" if skipped else "nothing found"
        raise ImageInputError(f"images: none of the {candidates} inputs is readable; the first: {first}")
    names = _unique_names([r.name for r in entries])
    refs = [r if r.name == n else ImageRef(n, r.source, r.size_hw, r.kind, r.frame, r._pixels)
            for r, n in zip(entries, names)]
    return ImageScan(refs=refs, skipped=skipped)


def _memory_ref(pixels: np.ndarray, name: str, source: str) -> ImageRef:
    return ImageRef(name=name, source=source, size_hw=(int(pixels.shape[0]), int(pixels.shape[1])),
                    kind="memory", _pixels=pixels)


def load_images(inputs: Union[ImageLike, Sequence[ImageLike]], *, fps: Optional[float] = 2.0,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> List[LoadedImage]:
    """Everything a user may pass as photos -> a list of upright RGB uint8 images.

    ``inputs``: one or several of: an image file, a folder of images (natural order; other
    files are skipped), a video file (sampled at ``fps``), a PIL image, an array.  A batch
    array (N, H, W, 3) is split into views.  Names are unique (suffixes added on clashes).
    Every view is held at full resolution: for many views use :func:`scan_images` and
    :func:`iter_processed`.
    """
    scan = scan_images(inputs, fps=fps, max_pixels=max_pixels)
    with FrameReader() as reader:
        return [LoadedImage(pixels=reader.read(r), name=r.name, source=r.source) for r in scan.refs]


def _unique_names(names: Iterable[str]) -> List[str]:
    seen = {}
    out = []
    for base in names:
        if base in seen:
            seen[base] += 1
            out.append(f"{base}_{seen[base]}")
        else:
            seen[base] = 0
            out.append(base)
    return out


# ----------------------------------------------------------------------------- streaming

def _label(ref: ImageRef) -> str:
    return ref.name if ref.kind == "memory" else ref.source


def stream_target(refs: Sequence[ImageRef], process_res: int = 504,
                  process_res_method: str = "upper_bound_resize") -> Tuple[int, int]:
    """The processed (h, w) of every view of ``refs`` (step 3's common size), from the scanned
    sizes alone; raises for a view whose aspect ratio is too extreme."""
    check_method(process_res, process_res_method)
    if not refs:
        raise ValueError("no views given")
    return crop_target([processed_size(*r.size_hw, process_res, process_res_method, name=_label(r)) for r in refs])


def _draft_size(ref: ImageRef, process_res: int, process_res_method: str) -> Optional[Tuple[int, int]]:
    """Twice the size of the first resize (upright w, h): a JPEG decoded at the smallest DCT
    scale at least that large loses little to the following area resize."""
    steps = resize_plan(*ref.size_hw, process_res, process_res_method, _label(ref))[0]
    if ref.kind != "file" or not steps or steps[0][0] != "resize" or steps[0][5]:
        return None
    return 2 * steps[0][3], 2 * steps[0][4]


def iter_processed(refs: Iterable[ImageRef], process_res: int = 504,
                   process_res_method: str = "upper_bound_resize", *, workers: int = 2, prefetch: int = 4,
                   skip: Optional[Iterable[int]] = None,
                   fast_decode: bool = False) -> Iterator[Tuple[int, ProcessedImage]]:
    """(index, processed view) for every view of ``refs`` (from ``images.scan_images``) in input
    order, bit-identical to ``preprocess.process_images`` on the whole decoded list.

    Photos are decoded and resized by ``workers`` threads (video frames by one more thread,
    in order); at most ``prefetch`` views are in flight, and each full-resolution decode is
    dropped as soon as it is resized.  Indices in ``skip`` are neither decoded nor yielded
    (step 3's common size still counts them).  ``fast_decode``: JPEGs decode at a reduced DCT
    scale (at least twice the processed size): faster, not bit-identical.  The size and
    aspect checks run on the call; decode errors are raised (ImageInputError) on iteration.
    """
    refs = list(refs)
    if workers < 1 or prefetch < 1:
        raise ValueError(f"iter_processed: workers and prefetch must be at least 1, got {workers}, {prefetch}")
    target = stream_target(refs, process_res, process_res_method)
    skipped = frozenset(skip or ())
    todo = [i for i in range(len(refs)) if i not in skipped]

    def work(i: int, reader: Optional[FrameReader]) -> ProcessedImage:
        ref = refs[i]
        draft = _draft_size(ref, process_res, process_res_method) if fast_decode else None
        pixels = reader.read(ref) if reader is not None else read_image(ref, draft=draft)
        if draft is None and pixels.shape[:2] != tuple(ref.size_hw):
            raise ImageInputError(f"{_label(ref)}: decodes to {pixels.shape[1]}x{pixels.shape[0]} pixels but its "
                                  f"header said {ref.size_hw[1]}x{ref.size_hw[0]} (changed since it was scanned?)")
        return process_one(pixels, process_res, process_res_method, target, _label(ref), size_hw=ref.size_hw)

    return _stream(todo, refs, work, workers, prefetch)


def _stream(todo: List[int], refs: List[ImageRef], work, workers: int, prefetch: int):
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="da3p-decode")
    video_pool: Optional[ThreadPoolExecutor] = None
    reader = FrameReader()  # used by the one video thread only: frames are decoded in order
    pending: deque = deque()
    upcoming = iter(todo)

    def submit() -> None:
        nonlocal video_pool
        i = next(upcoming, None)
        if i is None:
            return
        if refs[i].kind == "video":
            if video_pool is None:
                video_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="da3p-video")
            pending.append((i, video_pool.submit(work, i, reader)))
        else:
            pending.append((i, pool.submit(work, i, None)))

    try:
        for _ in range(prefetch):
            submit()
        while pending:
            i, future = pending.popleft()
            done = future.result()
            submit()
            yield i, done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if video_pool is not None:
            video_pool.shutdown(wait=True, cancel_futures=True)
        reader.close()


def load_processed(refs: Iterable[ImageRef], process_res: int = 504,
                   process_res_method: str = "upper_bound_resize", *, out: Optional[np.ndarray] = None,
                   progress: Optional[Callable[[int, int], None]] = None, workers: int = 2, prefetch: int = 4,
                   fast_decode: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Every view of ``refs`` processed: the (N, h, w, 3) uint8 batch and (N, 3, 3) float64
    transforms ``preprocess.process_images`` gives, holding only the few views in flight at full
    resolution.  ``out``: a preallocated (N, h, w, 3) uint8 array or ``np.memmap`` to fill
    (shape: :func:`stream_target`); ``progress(done, total)`` is called after each view."""
    refs = list(refs)
    h, w = stream_target(refs, process_res, process_res_method)
    shape = (len(refs), h, w, 3)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif tuple(out.shape) != shape or out.dtype != np.uint8:
        raise ValueError(f"load_processed: out must be uint8 of shape {shape}, got {out.dtype} {tuple(out.shape)}")
    transforms = np.empty((len(refs), 3, 3), dtype=np.float64)
    stream = iter_processed(refs, process_res, process_res_method, workers=workers, prefetch=prefetch,
                            fast_decode=fast_decode)
    for done, (i, im) in enumerate(stream, 1):
        out[i] = im.pixels
        transforms[i] = im.transform
        if progress is not None:
            progress(done, len(refs))
    return out, transforms
