"""Chunks of a long input: the plan (overlapping windows of views) and the on-disk cache of
chunk predictions that makes an interrupted run resumable.

The cache is a folder of ``.npz`` files, one per network pass (``chunk_<first>_<last>.npz``,
``loop_<...>.npz``), plus ``cache.json`` holding the run's key: a hash of the predictor, the
options that change predictions, the inputs (names, sizes, file sizes and times) and the
given poses.  A folder whose key differs is emptied before use, so a stale prediction is never
read back.  Files are written under a temporary name and renamed, so a run stopped mid-write
leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

from .predictor import ChunkPrediction
from .reconstruction import GaussianSet

__all__ = ["chunk_ranges", "default_overlap", "ChunkCache", "run_key"]

CACHE_FORMAT = 1
_GS_FIELDS = ("means", "scales", "rotations", "harmonics", "opacities", "view")


def chunk_ranges(n: int, size: int, overlap: int) -> List[range]:
    """Overlapping windows covering 0..n-1; consecutive windows share ``overlap`` views."""
    if n <= size:
        return [range(n)]
    step = size - overlap
    starts = list(range(0, n - size, step)) + [n - size]
    return [range(s, s + size) for s in starts]


def default_overlap(size: int) -> int:
    """Views shared by consecutive chunks when the user does not say: a quarter of the chunk,
    between 2 and 16 (see benchmarks/bench_long.py for the measurements behind it)."""
    return max(2, min(16, size // 4))


def run_key(*parts) -> str:
    """A short stable hash of JSON-able parts and numpy arrays (for the cache key)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def input_identity(sources: Sequence[str], names: Sequence[str], sizes: np.ndarray) -> list:
    """What identifies the inputs for the cache: names, sizes, and each file's size and time."""
    out = []
    for src, name, hw in zip(sources, names, np.asarray(sizes).tolist()):
        path = src.split("#", 1)[0] if src else ""
        stat = None
        if path and os.path.isfile(path):
            st = os.stat(path)
            stat = (st.st_size, st.st_mtime_ns)
        out.append((name, src, hw, stat))
    return out


class ChunkCache:
    """Chunk predictions on disk, keyed by the run (see the module docstring).

    ``folder=None`` uses a private temporary folder that :meth:`close` removes; a given folder
    is kept (that is what makes a rerun resume) until :meth:`clear` is called after success.
    """

    def __init__(self, folder: Optional[os.PathLike], key: str) -> None:
        self.persistent = folder is not None
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="da3p-chunks-"))
        self.key = key
        self.resumed = 0
        self._written: set = set()  # passes this run put here (reading them back is no resume)
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = self.folder / "cache.json"
        old = None
        if manifest.is_file():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError):
                old = None
        if not old or old.get("key") != key or old.get("format") != CACHE_FORMAT:
            for f in self._files():
                f.unlink()
            tmp = manifest.with_name(manifest.name + ".tmp")
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "key": key}))
            os.replace(tmp, manifest)

    def _files(self) -> Iterable[Path]:
        return [p for p in self.folder.glob("*.npz")] + [p for p in self.folder.glob("*.npz.tmp")]

    @staticmethod
    def name(kind: str, views: Sequence[int]) -> str:
        views = np.asarray(views, np.int64)
        contiguous = views.size and np.array_equal(views, np.arange(views[0], views[0] + views.size))
        tag = f"{views[0]:06d}_{views[-1]:06d}" if contiguous else run_key(views)[:16]
        return f"{kind}_{tag}.npz"

    def get(self, kind: str, views: Sequence[int]) -> Optional[ChunkPrediction]:
        path = self.folder / self.name(kind, views)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if not np.array_equal(z["views"], np.asarray(views)):
                    return None
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError):
            return None  # unreadable: predict again
        gs = None
        if "gs_means" in data:
            gs = GaussianSet(*(data.get(f"gs_{f}") for f in _GS_FIELDS))
        if path.name not in self._written:  # read back from an earlier, interrupted run
            self.resumed += 1
        return ChunkPrediction(depth=data["depth"], extrinsics=data["extrinsics"], intrinsics=data["intrinsics"],
                               conf=data.get("conf"), sky=data.get("sky"), gaussians=gs,
                               features=data.get("features"), is_metric=bool(data["is_metric"]))

    def has(self, kind: str, views: Sequence[int]) -> bool:
        """Whether a pass is in the cache (its file exists; :meth:`get` still checks it)."""
        return (self.folder / self.name(kind, views)).is_file()

    def cameras(self, kind: str, views: Sequence[int]):
        """(extrinsics, intrinsics) of a cached pass, reading nothing else; None when absent."""
        path = self.folder / self.name(kind, views)
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["extrinsics"], z["intrinsics"]
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def put(self, kind: str, views: Sequence[int], pred: ChunkPrediction) -> None:
        arrays = {"views": np.asarray(views, np.int64), "depth": pred.depth, "extrinsics": pred.extrinsics,
                  "intrinsics": pred.intrinsics, "is_metric": np.array(pred.is_metric)}
        for name in ("conf", "sky", "features"):
            if getattr(pred, name) is not None:
                arrays[name] = getattr(pred, name)
        if pred.gaussians is not None:
            for f in _GS_FIELDS:
                if getattr(pred.gaussians, f) is not None:
                    arrays[f"gs_{f}"] = getattr(pred.gaussians, f)
        path = self.folder / self.name(kind, views)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
        self._written.add(path.name)

    def close(self, success: bool) -> None:
        """Remove a temporary cache; a persistent one is removed after a successful run."""
        if not self.persistent or success:
            shutil.rmtree(self.folder, ignore_errors=True)
