"""The reconstruction options: one frozen dataclass, the single definition every front end uses.

Pure Python (the Blender extension vendors it, with ``errors.py``).  ``DA3Model.reconstruct``,
``pipeline.reconstruct``, the ``da3p reconstruct`` arguments, the worker's request, the
nerfstudio dataparser's config and cache key and the Blender operator's enum items all derive
from :class:`ReconstructOptions` and the constants here.  A scene file records the options it
was made with as :class:`SceneOptions` (the options plus what the run found out).

Each field's ``metadata`` says how the command line shows it: ``flag`` (the ``da3p`` option),
``help`` and, for choices, ``choices``; ``da3_plugins.cli`` builds its arguments from that.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

try:  # inside the package
    from .errors import OptionError
except ImportError:  # copied as plain modules (the Blender extension)
    from errors import OptionError  # type: ignore[no-redef]

PATCH_SIZE = 14
"""The ViT patch: processed sides are multiples of it, and ``process_res`` is at least it."""
RESIZE_METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")
"""How photos become the network's input size (the official four)."""
REF_VIEW_STRATEGIES = ("first", "middle", "saddle_balanced", "saddle_sim_range")
"""How the reference view of a multi-view pass is chosen (the official four)."""
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
"""Backbone compute precision; the heads always run in float32.  ``fp32`` is exact; ``auto`` (what
every front end loads with) is bf16 on GPUs with native bf16, fp16 on other GPUs and Apple MPS, and
on CPUs bf16 only with AMX, else fp32 (``core/precision.py``); ``int8`` (CPU only) quantises the
backbone's Linear layers.  A scene records the resolved name, never ``auto``."""
LOOP_CLOSURES = ("auto", "off")
"""Loop closure on long inputs: ``auto`` looks for loops when a run takes three passes or more."""
CAMERA_SOURCES = ("predicted", "input", "none")
"""Where a scene's cameras come from: the network, the user's poses, or nowhere (monocular)."""
FRAME_SOURCE_KINDS = ("", "video", "image_sequence")
"""What a scene's views are frames of: nothing known (photos), one video file, or one numbered
image sequence (a folder of files whose names end in their frame number)."""


def _opt(default, flag: Optional[str], help: str, choices: Optional[Tuple[str, ...]] = None):
    return field(default=default, metadata={"flag": flag, "help": help, "choices": choices})


@dataclass(frozen=True)
class ReconstructOptions:
    """How photos are turned into a reconstruction (everything but the photos and cameras).

    Build it with keywords; it validates itself and raises :class:`OptionError` with a one-line
    message naming the field.  ``to_json`` / ``from_json`` round-trip it exactly.
    """

    process_res: int = _opt(504, "--process-res", "network input size: the long side for *_resize (default 504)")
    process_res_method: str = _opt("upper_bound_resize", "--process-res-method",
                                   "how photos are resized or cropped to the input size", RESIZE_METHODS)
    ref_view_strategy: str = _opt("saddle_balanced", "--ref-view", "how the reference view is chosen",
                                  REF_VIEW_STRATEGIES)
    use_ray_pose: bool = _opt(False, "--ray-pose", "cameras from the ray map instead of the camera head")
    infer_gs: bool = _opt(False, "--gaussians", "also predict 3D Gaussians (giant / nested models)")
    align_to_input_ext_scale: bool = _opt(True, None, "with known poses: return the result in their scale")
    max_views_per_pass: Optional[int] = _opt(None, "--max-views",
                                             "views per network pass; more run in overlapping chunks "
                                             "(default: from memory)")
    chunk_overlap: Optional[int] = _opt(None, "--chunk-overlap",
                                        "views shared by consecutive chunks (default max(2, min(16, chunk/4)))")
    seed: Optional[int] = _opt(0, "--seed", "seeds the random parts (sky sampling, ray-pose RANSAC) without "
                                            "touching the global RNG (default 0)")
    precision: Optional[str] = _opt(None, "--dtype",
                                    "backbone compute precision (default auto: bf16 on GPUs with native bf16, fp16 on "
                                    "other GPUs and MPS, on CPUs bf16 with AMX, else fp32; fp32 is exact; int8: CPU "
                                    "only, Linear layers quantised, faster, approximate; in Python, none keeps the "
                                    "precision the model was loaded with)", PRECISIONS)

    loop_closure: str = _opt("auto", "--loop-closure",
                             "long inputs: find places the camera returns to and close the loop "
                             "(auto: when the run takes 3 passes or more)", LOOP_CLOSURES)
    fast_decode: bool = _opt(False, "--fast-decode",
                             "decode JPEGs at a reduced scale (2-4x faster reading; pixels differ from the "
                             "official preprocessing by about 0.3 levels on average)")
    skip_unreadable: bool = _opt(False, "--skip-unreadable",
                                 "leave out input files that cannot be read (listed in the scene) "
                                 "instead of stopping at the first")

    def __post_init__(self) -> None:
        _check_int(self, "process_res", minimum=PATCH_SIZE)
        _check_choice(self, "process_res_method", RESIZE_METHODS)
        _check_choice(self, "ref_view_strategy", REF_VIEW_STRATEGIES)
        _check_choice(self, "loop_closure", LOOP_CLOSURES)
        for name in ("use_ray_pose", "infer_gs", "align_to_input_ext_scale", "skip_unreadable",
                     "fast_decode"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        _check_int(self, "max_views_per_pass", minimum=1, optional=True)
        _check_int(self, "chunk_overlap", minimum=1, optional=True)
        _check_int(self, "seed", minimum=0, optional=True)
        if self.precision is not None:
            _check_choice(self, "precision", PRECISIONS)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON types, every field (including defaults)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "options"):
        """From a mapping; an unknown key is an :class:`OptionError` naming it (and ``where``)."""
        if not isinstance(data, Mapping):
            raise OptionError(f"{where}: expected an object of option names and values, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionError(f"{where}: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**{k: _from_plain(cls, k, v) for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str, *, where: str = "options"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise OptionError(f"{where}: not JSON ({exc})") from None
        return cls.from_dict(data, where=where)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def cache_key(self) -> str:
        """A stable text for cache keys: every option that changes the result."""
        return self.to_json()

    @classmethod
    def option_fields(cls):
        """The fields of :class:`ReconstructOptions` itself (not of subclasses' run facts)."""
        return tuple(f for f in fields(ReconstructOptions))


@dataclass(frozen=True)
class SceneOptions(ReconstructOptions):
    """What a scene file records about how it was made: the options, plus what the run found.

    ``max_views_per_pass`` and ``chunk_overlap`` hold the values actually used.  Older scene
    files (a plain dict) load through :meth:`from_saved`, which keeps unknown keys in ``extra``
    instead of refusing them.  Reading it like the old dict (``options["camera_source"]``,
    ``options.get(...)``) still works.
    """

    camera_source: str = _opt("predicted", None, "where the cameras come from", CAMERA_SOURCES)
    passes: int = _opt(1, None, "network passes (chunks) the run took")
    image_files: Tuple[str, ...] = _opt((), None, "the photos' file names, where they were files")
    skipped_files: Tuple[str, ...] = _opt((), None, "inputs left out by skip_unreadable: 'file: reason'")
    joints: Tuple[Mapping[str, Any], ...] = field(
        default=(), hash=False, metadata={"flag": None, "help": "chunk-to-chunk constraints: chunks a and b, "
                                          "kind (overlap or loop), views, residual, inlier ratio, used",
                                          "choices": None})
    alignment: str = _opt("single pass", None, "how the passes were joined")
    frame_source: str = _opt("", None, "the video file or image-sequence folder the views are frames of ('' for "
                                       "photos)")
    frame_source_kind: str = _opt("", None, "'video', 'image_sequence' or '' (photos)", FRAME_SOURCE_KINDS)
    frame_rate: float = _opt(0.0, None, "the footage's frames per second (0: unknown)")
    frame_indices: Tuple[int, ...] = _opt((), None, "each view's frame: the 0-based frame of a video, the "
                                                    "number in the file name of an image sequence")
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice(self, "camera_source", CAMERA_SOURCES)
        _check_int(self, "passes", minimum=0)
        object.__setattr__(self, "image_files", tuple(str(x) for x in (self.image_files or ())))
        object.__setattr__(self, "skipped_files", tuple(str(x) for x in (self.skipped_files or ())))
        if not all(isinstance(j, Mapping) for j in self.joints or ()):
            raise OptionError("joints: expected a list of objects")
        object.__setattr__(self, "joints", tuple(dict(j) for j in (self.joints or ())))
        _check_choice(self, "frame_source_kind", FRAME_SOURCE_KINDS)
        if not isinstance(self.frame_source, str):
            raise OptionError(f"frame_source: expected a path, got {self.frame_source!r}")
        rate = self.frame_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (rate >= 0 and rate < float("inf")):
            raise OptionError(f"frame_rate: expected a number >= 0, got {rate!r}")
        object.__setattr__(self, "frame_rate", float(rate))
        indices = tuple(self.frame_indices or ())
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
            raise OptionError(f"frame_indices: expected integers >= 0, got {list(indices)[:5]!r}")
        object.__setattr__(self, "frame_indices", indices)
        object.__setattr__(self, "extra", dict(self.extra or {}))

    @classmethod
    def from_saved(cls, data: Optional[Mapping[str, Any]]) -> "SceneOptions":
        """From a scene file's options (any version): known keys are read, others kept in ``extra``.

        A value that does not validate (a file written by hand) falls back to the default and is
        kept in ``extra`` too, so an old or foreign file always loads.
        """
        data = dict(data or {})
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        values = {}
        for k in known & set(data):
            value = _from_plain(cls, k, data[k])
            try:
                cls(**{k: value})
            except (OptionError, TypeError):
                extra[k] = data[k]
            else:
                values[k] = value
        return cls(**values, extra=extra)

    @classmethod
    def of_run(cls, options: ReconstructOptions, **facts) -> "SceneOptions":
        """``options`` plus what the run found (``camera_source``, ``passes``, ... and the values
        it actually used for option fields, such as the chunk size)."""
        return cls(**{**_option_values(options), **facts})

    def to_saved(self) -> Dict[str, Any]:
        """The JSON object a scene file stores (``extra`` keys at the top level, as they came)."""
        out = {k: v for k, v in self.to_dict().items() if k != "extra"}
        for k, v in self.extra.items():
            out.setdefault(k, v)
        return out

    @property
    def reconstruct_options(self) -> ReconstructOptions:
        """Just the options, to run the same reconstruction again."""
        return ReconstructOptions(**_option_values(self))

    # the old dict interface, read-only
    def __getitem__(self, key: str):
        if key in self.extra:
            return self.extra[key]
        if key == "extra" or key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        value = getattr(self, key)
        return list(value) if isinstance(value, tuple) else value

    def get(self, key: str, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT


_ABSENT = object()


def _option_values(obj) -> Dict[str, Any]:
    """{field: value} of the :class:`ReconstructOptions` fields of ``obj``."""
    return {f.name: getattr(obj, f.name) for f in fields(ReconstructOptions)}


def option_defaults() -> Dict[str, Any]:
    """{field: default} of :class:`ReconstructOptions`."""
    return {f.name: f.default for f in fields(ReconstructOptions) if f.default is not MISSING}


# ---------------------------------------------------------------------------------- helpers


def _check_int(obj, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(obj, name)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(f"{name}: expected an integer >= {minimum}{' or none' if optional else ''}, got {value!r}")


def _check_choice(obj, name: str, choices: Tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise OptionError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def _plain(value):
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _from_plain(cls, name: str, value):
    """JSON values back to field types: lists to tuples; whole floats to ints for int fields."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, float) and value.is_integer() and name in ("process_res", "max_views_per_pass",
                                                                    "chunk_overlap", "seed", "passes"):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and name == "frame_rate":
        return float(value)
    return value


__all__ = [
    "CAMERA_SOURCES", "FRAME_SOURCE_KINDS", "LOOP_CLOSURES", "PATCH_SIZE", "PRECISIONS", "REF_VIEW_STRATEGIES", "RESIZE_METHODS", "ReconstructOptions",
    "SceneOptions", "option_defaults",
]
