"""What a model name means: the embedded model, a local folder, a local file or a hub repo id.

Pure Python (no torch, no numpy): the Blender extension vendors it, with ``errors.py``, so
the add-on, ``da3p``, the worker and ``load_model`` all answer the question the same way.
:func:`classify_model_source` only looks at the name and the file system; it never reads a
checkpoint and never touches the network.  Reading the weights (and refusing pickles, which
``load_model`` never unpickles) is ``core.model.loading``'s job.

The rules, in order:

1. ``"embedded"`` is the small demo model shipped inside the package (works offline).
2. After ``~`` expansion, an existing folder is a model folder (``config.json`` +
   ``model.safetensors``) and an existing file is a weights file.
3. A name like ``owner/repo`` (one slash, hub-safe characters, not starting with ``.``, ``/``
   or ``~``, not ending in a weights or JSON suffix) is a Hugging Face hub repo id: only this
   kind needs the network (unless the hub cache already holds it).
4. Anything else is an error naming the model: a path that does not exist, or nonsense.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Union

try:  # inside the package
    from .errors import UserInputError
except ImportError:  # copied as plain modules (the Blender extension)
    from errors import UserInputError  # type: ignore[no-redef]

EMBEDDED = "embedded"
"""The name of the small offline demo model shipped inside the package (``da3_plugins/data/da3-tiny``)."""
DEFAULT_MODEL = "depth-anything/DA3NESTED-GIANT-LARGE-1.1"
"""The official model used when no model is given (a hub id: it needs the network once)."""
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
"""Suffixes of pickled checkpoints, which are never loaded (unpickling can run arbitrary code)."""
FILE_SUFFIXES = (".safetensors", ".json") + PICKLE_SUFFIXES
"""Suffixes that make a name a file path, never a hub repo id."""
KINDS = ("embedded", "folder", "file", "hub")
"""The kinds of model source, as :attr:`ModelSource.kind` names them."""

_HUB_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXAMPLE = "'depth-anything/DA3-BASE'"


class ModelSourceError(UserInputError):
    """A model name that names no model (empty, or neither an existing path nor a hub repo id)."""


class ModelNotFoundError(ModelSourceError, FileNotFoundError):
    """A model name that is not an existing file or folder and not a hub repo id.

    Also a ``FileNotFoundError``, as ``load_model`` has always raised for a missing model.
    """


@dataclass(frozen=True)
class ModelSource:
    """A classified model name.

    ``kind`` is one of :data:`KINDS`; ``location`` is the path with ``~`` expanded (kinds
    ``folder`` and ``file``), the repo id (``hub``) or ``"embedded"``.
    """

    kind: str
    location: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def needs_network(self) -> bool:
        """Whether using it may need the network: only hub ids do (embedded, folders, files never)."""
        return self.kind == "hub"

    @property
    def is_pickle(self) -> bool:
        """A file with a pickle suffix: a checkpoint that ``load_model`` refuses to unpickle."""
        return self.kind == "file" and self.location.lower().endswith(PICKLE_SUFFIXES)


def looks_like_hub_id(name: str) -> bool:
    """``owner/repo`` with hub-safe characters, and nothing that makes it a file path."""
    parts = name.split("/")
    return (
        len(parts) == 2
        and all(_HUB_PART.fullmatch(part) for part in parts)
        and not name.lower().endswith(FILE_SUFFIXES)
    )


def classify_model_source(name: Union[str, "os.PathLike[str]"]) -> ModelSource:
    """Decide what a model name is (see the module docstring for the rules).

    Args:
        name: ``"embedded"``, a folder or file path (``~`` is expanded; relative paths are
            taken from the current directory) or a hub repo id such as ``"depth-anything/DA3-BASE"``.

    Returns:
        A :class:`ModelSource`.  Existing paths win over hub ids (a local folder ``owner/repo``
        is a folder); ``"embedded"`` wins over a folder of that name.

    Raises:
        ModelSourceError: an empty name, or one that is not text.
        ModelNotFoundError: a path that does not exist, or a name that is no hub repo id
            (one line naming the model).
    """
    text = os.fspath(name)
    if not isinstance(text, str):
        raise ModelSourceError(f"model: expected a name or path as text, got {type(text).__name__}")
    if not text.strip():
        raise ModelSourceError(f"model: empty name; give a model folder, a .safetensors file, a hub repo id "
                               f"like {_EXAMPLE} or {EMBEDDED!r}")
    if text == EMBEDDED:
        return ModelSource(EMBEDDED, EMBEDDED)
    path = os.path.expanduser(text)
    if os.path.isdir(path):
        return ModelSource("folder", path)
    if os.path.isfile(path):
        return ModelSource("file", path)
    if looks_like_hub_id(text):
        return ModelSource("hub", text)
    raise ModelNotFoundError(f"{text}: no such file or folder, and not a hub repo id like {_EXAMPLE}")


__all__ = [
    "DEFAULT_MODEL", "EMBEDDED", "FILE_SUFFIXES", "KINDS", "ModelNotFoundError", "ModelSource", "ModelSourceError",
    "PICKLE_SUFFIXES", "classify_model_source", "looks_like_hub_id",
]
