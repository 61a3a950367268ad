"""Depth and confidence as pictures (colour-mapped PNG) and as data (16-bit PNG), numpy + zlib.

* **Pictures** use Turbo (Google's colour map, as Mikhailov's polynomial fit, no matplotlib):
  depth is normalised per view between the 2nd and 98th percentile of *inverse* depth, so
  **near is warm (red), far is cold (blue)**; confidence is normalised between the 2nd and 98th
  percentile of log-confidence, **high is warm**.  Invalid pixels (non-finite or non-positive
  depth, sky when the reconstruction has a sky mask) are black.
* **Data**: 16-bit PNGs hold ``round(depth / unit)`` with 0 meaning "no depth"; ``unit`` is
  1e-3 (millimetres for metric depth, nerfstudio's default ``depth_unit_scale_factor``) unless
  the largest depth would not fit in 16 bits, then ``max_depth / 65535``.  The unit is written
  beside the PNGs in ``depth_units.json``.  The depth is z-depth, at the processed resolution.
* **Training data**: the folder is also a scene folder of the simple training-data format
  (``docs/training-data.md``, read by :mod:`core.datasets`): ``images/<stem>.png`` (the
  processed images), ``<stem>_depth.npy`` (float32 z-depth, 0 where invalid or sky),
  ``<stem>_conf.npy`` (float32 confidence) and ``cameras.json`` (K and OpenCV world-to-camera
  at the processed resolution, ``min_conf``: the "auto" confidence threshold), so that
  ``da3p train --data`` reads it directly.
* **Speed**: views are written in parallel by a pool of threads (:func:`map_views`), PNGs by
  :func:`encode_png` (numpy filter, zlib Huffman coding: chosen by measurement, see
  :data:`PNG_ZLIB`), the Turbo colours from an exact table (:func:`turbo`).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import struct
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Deque, List, Optional, Tuple, TypeVar, Union

import numpy as np

from ..points import resolve_conf_threshold
from ..reconstruction import Reconstruction, atomic_folder

PathLike = Union[str, os.PathLike]

#: the unit of 16-bit depth PNGs unless the depth would overflow (millimetres for metric depth)
DEFAULT_DEPTH_UNIT = 1e-3

PNG_ZLIB = {8: (1, zlib.Z_HUFFMAN_ONLY), 16: (1, zlib.Z_DEFAULT_STRATEGY)}
"""zlib's (level, strategy) for the exports' PNGs (:func:`encode_png`), by bits per sample:
Huffman coding only for 8-bit pictures, level 1 for 16-bit depth (whose repeated high bytes
LZ77 finds).  Chosen by measurement (``benchmarks/bench_exports.py --png``, 504x378 pictures,
one core): PNG's "Sub" filter then these take 3-6 ms a picture where Pillow's default
(adaptive per-row filters, zlib level 6) takes 30-60 ms and Pillow with Huffman coding only
5-14 ms; the files are 20-40% larger than level 6's.  That halves the depth export's time and
adds about 13% to its size (most of which is ``.npy`` data)."""

MAX_WORKERS = 8
"""At most this many threads write per-view files (PNG encoding and numpy release the GIL)."""

T = TypeVar("T")

# Turbo colour map, polynomial approximation (Mikhailov 2019), input t in [0, 1]
_TURBO_R = (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943)
_TURBO_G = (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604)
_TURBO_B = (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973)


def turbo(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape; clipped) -> uint8 RGB of shape ``t.shape + (3,)``.

    0 is dark blue, 1 dark red.  Looked up in a table of :data:`_TABLE_CELLS` cells of t, which
    holds a cell's colour only where the colour cannot change inside it (see :func:`_turbo_table`);
    the values in the other cells (about 2%) are computed by the polynomial (:func:`_turbo_exact`).
    """
    t = np.clip(np.asarray(t, np.float64), 0.0, 1.0)
    colours, sure = _turbo_table()
    cell = (t * _TABLE_CELLS).astype(np.intp)  # exact: a power of two; t = 1 falls in the last, unsure cell
    out = np.take(colours, cell, axis=0)
    unsure = ~np.take(sure, cell)
    if unsure.any():
        out[unsure] = _turbo_exact(t[unsure])
    return out


_TABLE_CELLS = 1 << 16


def _turbo_exact(t: np.ndarray) -> np.ndarray:
    """The Turbo polynomial at t in [0, 1], rounded to uint8 (the definition of :func:`turbo`)."""
    return _turbo_scaled(t).round().astype(np.uint8)


def _turbo_scaled(t: np.ndarray) -> np.ndarray:
    """``255 * clip(polynomial(t), 0, 1)`` per channel, float64 ``t.shape + (3,)``."""
    t = np.asarray(t, np.float64)
    powers = np.empty(t.shape + (6,))
    for i in range(6):
        powers[..., i] = t**i
    rgb = np.empty(t.shape + (3,))
    for k, c in enumerate((_TURBO_R, _TURBO_G, _TURBO_B)):
        rgb[..., k] = powers @ np.array(c)
    np.clip(rgb, 0, 1, out=rgb)
    rgb *= 255
    return rgb


@functools.lru_cache(maxsize=None)
def _turbo_table() -> Tuple[np.ndarray, np.ndarray]:
    """(cells + 1, 3) uint8 colours and (cells + 1,) bool "sure" of the cells [i, i+1) / cells.

    A cell is sure when every channel rounds to the same value at both ends, at least 1e-6 of
    a level away from a rounding boundary (float error in the polynomial is below 1e-10 of a
    level), and no channel's polynomial turns inside it: a channel is then monotonic across the
    cell, so every t inside gets the ends' colour.  Built once (65537 polynomial values)."""
    edges = np.arange(_TABLE_CELLS + 1, dtype=np.float64) / _TABLE_CELLS  # exact
    scaled = _turbo_scaled(edges)
    level = np.rint(scaled)
    clear = np.abs(np.abs(scaled - level) - 0.5) > 1e-6
    sure = np.zeros(_TABLE_CELLS + 1, bool)
    sure[:-1] = ((level[:-1] == level[1:]) & clear[:-1] & clear[1:]).all(1)
    for c in (_TURBO_R, _TURBO_G, _TURBO_B):  # cells holding a turning point (and their neighbours)
        slope = np.polynomial.Polynomial(c).deriv()
        for r in slope.roots():
            if abs(r.imag) < 1e-9 and -1e-3 <= r.real <= 1 + 1e-3:
                i = int(np.clip(r.real, 0, 1) * _TABLE_CELLS)
                sure[max(i - 1, 0):i + 2] = False
    return level.astype(np.uint8), sure


def colorize_depth(depth: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 picture: near warm, far cold, invalid black.

    Args:
        depth: z-depth (any unit); non-finite or non-positive values are invalid.
        valid: optional (H, W) bool mask of pixels to show (e.g. not sky).
    """
    return _colorize(depth, valid, "depth", lambda d: 1.0 / d)


def colorize_confidence(conf: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) confidence -> (H, W, 3) uint8 picture: high warm, low cold (log scale), invalid black.

    Args:
        conf: confidence (DA3's is >= 1); non-finite or non-positive values are invalid.
        valid: optional (H, W) bool mask of pixels to show.
    """
    return _colorize(conf, valid, "conf", np.log)


def _colorize(values: np.ndarray, valid: Optional[np.ndarray], name: str, transform) -> np.ndarray:
    """Colour ``transform(values)`` by percentiles where values are finite and positive (and
    ``valid``); everything else black."""
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name}: expected an (H, W) array, got shape {values.shape}")
    ok = np.isfinite(values) & (values > 0)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    out = np.zeros(values.shape + (3,), np.uint8)
    if not ok.any():
        return out
    v = transform(values[ok]).astype(np.float64)
    lo, hi = np.percentile(v, [2.0, 98.0])
    v -= lo
    v /= max(hi - lo, 1e-12)
    colours = turbo(v)
    if len(v) == ok.size:  # every pixel shown
        return colours.reshape(out.shape)
    for k in range(3):  # channel by channel: much faster than assigning (n, 3) rows through a mask
        out[..., k][ok] = colours[:, k]
    return out


def depth_to_uint16(depth: np.ndarray, unit: Optional[float] = None) -> Tuple[np.ndarray, float]:
    """Depth (any shape) -> ``(uint16 array, unit)`` with ``depth ~= value * unit``; 0 = invalid.

    Args:
        depth: z-depth; non-finite or non-positive values become 0.
        unit: the depth of one step; by default :data:`DEFAULT_DEPTH_UNIT` (1e-3), or
            ``max_depth / 65535`` when the largest depth would not fit.  Depths beyond
            ``65535 * unit`` are clipped to 65535; positive depths below half a unit become 1.
    """
    depth = np.asarray(depth)
    valid = np.isfinite(depth) & (depth > 0)
    if unit is None:
        unit = default_depth_unit(float(depth[valid].max()) if valid.any() else 1.0)
    unit = float(unit)
    if not np.isfinite(unit) or unit <= 0:
        raise ValueError(f"unit: expected a positive number, got {unit!r}")
    q = np.zeros(depth.shape, np.uint16)
    q[valid] = np.clip(np.round(depth[valid].astype(np.float64) / unit), 1, 65535).astype(np.uint16)
    return q, unit


def default_depth_unit(top: float) -> float:
    """The 16-bit depth step for depths up to ``top``: :data:`DEFAULT_DEPTH_UNIT`, or
    ``top / 65535`` when that would overflow."""
    return DEFAULT_DEPTH_UNIT if top / DEFAULT_DEPTH_UNIT <= 65535 else top / 65535.0


def largest_depth(rec: Reconstruction, drop_sky: bool = True) -> float:
    """The largest valid depth (finite, positive, not sky with ``drop_sky``), view by view
    (a scene of memory maps stays on disk); 1.0 when there is none."""
    def top_of(i: int) -> float:
        ok = rec.valid_mask(None, drop_sky, views=slice(i, i + 1))[0]
        return float(np.max(rec.depth[i], where=ok, initial=-np.inf))

    top = max(map_views(top_of, rec.num_views), default=-np.inf)
    return 1.0 if top == -np.inf else top


def uint16_to_depth(values: np.ndarray, unit: float) -> np.ndarray:
    """Inverse of :func:`depth_to_uint16`: float32 depth, NaN where the value is 0."""
    v = np.asarray(values).astype(np.float64) * float(unit)
    v[np.asarray(values) == 0] = np.nan
    return v.astype(np.float32)


def file_stems(rec: Reconstruction) -> List[str]:
    """One file-system-safe, unique stem per view, from ``rec.image_names``.

    Characters other than letters, digits, ``-``, ``_`` and ``.`` become ``_``; repeated names
    get ``_1``, ``_2`` ... suffixes.
    """
    out: List[str] = []
    seen = set()
    for name in rec.image_names:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "view"
        cand, k = stem, 0
        while cand in seen:
            k += 1
            cand = f"{stem}_{k}"
        seen.add(cand)
        out.append(cand)
    return out


def encode_png(array: np.ndarray) -> List[bytes]:
    """A PNG of an (H, W, 3) uint8 (RGB), (H, W) uint8 (grey) or (H, W) uint16 (16-bit grey)
    array, as the pieces of the file in order (write them one after the other).

    Every row gets PNG's "Sub" filter (each byte minus the byte one pixel to its left, done by
    numpy for the whole picture at once), then zlib deflates the rows as :data:`PNG_ZLIB` says
    for the bit depth (zlib releases the GIL: pictures encode in parallel in threads).  Any PNG
    reader reads it.
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        colour_type, bits, bpp = 2, 8, 3
        rows = np.ascontiguousarray(a).reshape(a.shape[0], -1)
    elif a.ndim == 2 and a.dtype == np.uint8:
        colour_type, bits, bpp = 0, 8, 1
        rows = np.ascontiguousarray(a)
    elif a.ndim == 2 and a.dtype == np.uint16:
        colour_type, bits, bpp = 0, 16, 2
        rows = a.astype(">u2").view(np.uint8)  # PNG's samples are big-endian
    else:
        raise ValueError(f"image: expected (H, W, 3) uint8, (H, W) uint8 or (H, W) uint16, got {a.shape} {a.dtype}")
    if rows.size == 0:
        raise ValueError(f"image: a PNG needs at least one pixel, got shape {a.shape}")
    h, n = rows.shape
    filtered = np.empty((h, n + 1), np.uint8)
    filtered[:, 0] = 1  # filter type 1, Sub: x - left (the first pixel of a row has no left: itself)
    filtered[:, 1:bpp + 1] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=filtered[:, bpp + 1:])  # modulo 256
    level, strategy = PNG_ZLIB[bits]
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    data = z.compress(filtered) + z.flush()
    header = struct.pack(">IIBBBBB", a.shape[1], h, bits, colour_type, 0, 0, 0)
    return [b"\x89PNG\r\n\x1a\n", *_png_chunk(b"IHDR", header), *_png_chunk(b"IDAT", data),
            *_png_chunk(b"IEND", b"")]


def _png_chunk(tag: bytes, data: bytes) -> Tuple[bytes, bytes, bytes]:
    crc = zlib.crc32(data, zlib.crc32(tag))
    return struct.pack(">I", len(data)) + tag, data, struct.pack(">I", crc)


def save_png(array: np.ndarray, path: PathLike) -> None:
    """Write ``array`` as a PNG file (:func:`encode_png`)."""
    with open(path, "wb") as fh:
        for piece in encode_png(array):
            fh.write(piece)


def export_workers() -> int:
    """Threads for per-view files: the CPUs this process may use, at most :data:`MAX_WORKERS`."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, n))


def map_views(fn: Callable[[int], T], n: int, workers: Optional[int] = None) -> List[T]:
    """``[fn(0), ..., fn(n - 1)]``, computed by a pool of threads (``workers``, default
    :func:`export_workers`); each call handles one view, so memory is that of a few views.

    On the first error the calls not yet started are cancelled, the running ones finish, and
    the error is raised (so nothing writes into a folder after its writer gave up)."""
    workers = export_workers() if workers is None else int(workers)
    if workers <= 1 or n <= 1:
        return [fn(i) for i in range(n)]
    results: List[T] = []
    running: Deque[Future] = collections.deque()  # at most 2 calls per thread queued: results come in order
    with ThreadPoolExecutor(min(workers, n)) as pool:
        try:
            for i in range(n):
                running.append(pool.submit(fn, i))
                if len(running) >= 2 * workers:
                    results.append(running.popleft().result())
            while running:
                results.append(running.popleft().result())
        except BaseException:
            for f in running:
                f.cancel()
            raise
    return results


def write_depth_images(folder: PathLike, rec: Reconstruction, *, colour: bool = True, raw16: bool = True,
                       preview: bool = True, training: bool = True, unit: Optional[float] = None,
                       overwrite: bool = False, workers: Optional[int] = None) -> Path:
    """Write per-view depth pictures and data into ``folder`` (written whole, atomically).

    Per view (``<stem>`` from :func:`file_stems`), all at the processed resolution:

    * ``<stem>_depth.png``: colour-mapped depth (near warm, far cold, invalid/sky black);
    * ``<stem>_conf.png``: colour-mapped confidence, when the reconstruction has one;
    * ``<stem>_depth16.png``: 16-bit depth, ``depth = value * unit`` (0 = no depth), with
      ``depth_units.json`` recording ``unit`` (one unit for all views);
    * ``<stem>_preview.png``: the processed photo and its depth picture side by side;
    * with ``training`` (the default), a training-data scene folder (the simple format of
      ``docs/training-data.md``): ``images/<stem>.png`` (the processed image),
      ``<stem>_depth.npy`` (float32 z-depth, 0 where invalid: non-finite, non-positive, sky),
      ``<stem>_conf.npy`` (float32 confidence, when the reconstruction has one; NaN written
      as 0) and ``cameras.json``: ``frames`` of ``{image, K, w2c (3x4), depth, conf}`` (paths
      relative to ``folder``; K and OpenCV world-to-camera of the processed images) and
      ``min_conf``, the "auto" confidence threshold of the reconstruction
      (:func:`core.points.resolve_conf_threshold`), or null without confidence: the loader
      makes pixels with ``conf < min_conf`` unknown.

    Args:
        training: also write the training-data files (``images/``, ``*.npy``, ``cameras.json``).
        unit: the 16-bit depth step; default: see :func:`depth_to_uint16`.
        overwrite: replace an existing ``folder``; otherwise an existing folder is an error.
        workers: threads writing views in parallel (default :func:`export_workers`; 1: one
            after the other).  PNGs are written by :func:`encode_png` (fast, slightly larger).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    stems = file_stems(rec)
    with atomic_folder(folder, overwrite) as tmp:
        if raw16:
            unit = default_depth_unit(largest_depth(rec)) if unit is None else float(unit)
        if training:
            (tmp / "images").mkdir()

        def one_view(i: int) -> Optional[dict]:  # view by view (memory maps stay on disk), in threads
            stem = stems[i]
            valid = rec.valid_mask(None, drop_sky=True, views=slice(i, i + 1))[0]
            frame = _write_training_view(tmp, rec, i, stem, valid) if training else None
            coloured = colorize_depth(rec.depth[i], valid) if colour or preview else None
            if colour:
                save_png(coloured, tmp / f"{stem}_depth.png")
                if rec.conf is not None:
                    save_png(colorize_confidence(rec.conf[i], valid), tmp / f"{stem}_conf.png")
            if raw16:
                q, _ = depth_to_uint16(np.where(valid, rec.depth[i], np.nan), unit)
                save_png(q, tmp / f"{stem}_depth16.png")
            if preview:
                save_png(np.concatenate([rec.images[i], coloured], 1), tmp / f"{stem}_preview.png")
            return frame

        frames = map_views(one_view, len(stems), workers)
        if raw16:
            (tmp / "depth_units.json").write_text(json.dumps({
                "unit": unit,
                "meaning": "depth = png_value * unit; z-depth along the optical axis; 0 = no depth (invalid or sky)",
                "metric": rec.is_metric,
                "resolution": [rec.height, rec.width],
                "files": {stem: f"{stem}_depth16.png" for stem in stems},
            }, indent=2))
        if training:
            min_conf = None if rec.conf is None else float(resolve_conf_threshold("auto", rec.conf))
            (tmp / "cameras.json").write_text(json.dumps({
                "frames": frames,
                "min_conf": min_conf,
                "meaning": "a training-data scene folder (docs/training-data.md): processed images, z-depth "
                           "(0 = unknown), confidence; pixels with conf < min_conf are unknown",
                "metric": rec.is_metric,
            }, indent=1))
    return folder


def _write_training_view(tmp: Path, rec: Reconstruction, i: int, stem: str, valid: np.ndarray) -> dict:
    """View ``i``'s image, depth (0 where not ``valid``) and confidence files in ``tmp``; its
    ``cameras.json`` frame."""
    save_png(rec.images[i], tmp / "images" / f"{stem}.png")
    np.save(tmp / f"{stem}_depth.npy", np.where(valid, rec.depth[i], 0).astype(np.float32))
    frame = {"image": f"images/{stem}.png",
             "K": np.asarray(rec.intrinsics[i], np.float64).tolist(),
             "w2c": np.asarray(rec.extrinsics[i], np.float64)[:3].tolist(),
             "depth": f"{stem}_depth.npy"}
    if rec.conf is not None:
        conf = np.nan_to_num(np.asarray(rec.conf[i], np.float32), nan=0.0, posinf=np.finfo(np.float32).max,
                             neginf=0.0)
        np.save(tmp / f"{stem}_conf.npy", conf)
        frame["conf"] = f"{stem}_conf.npy"
    return frame
