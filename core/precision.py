"""Compute precision of the backbone: option names to torch dtypes and back.

One table for ``load_model(dtype=...)``, ``ReconstructOptions.precision`` and the scene file's
record of the precision a run used.  (torch only; the network and the pipeline both use it.)
"""

from __future__ import annotations

import contextlib
from typing import Union

import torch

from .errors import OptionError

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """Backbone compute dtype: None -> float32 (exact); also accepts "bf16"/"fp16" names."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise OptionError(f"dtype: expected float32, bfloat16 or float16, got {dtype}")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise OptionError(f"dtype: expected one of {', '.join(_DTYPES)}, got {dtype!r}") from None


_PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def precision_name(dtype: torch.dtype) -> str:
    """torch dtype -> the option name ("fp32", "bf16", "fp16")."""
    return _PRECISION_NAMES[dtype]


@contextlib.contextmanager
def backbone_precision(model, precision: Union[str, torch.dtype, None]):
    """Run ``model``'s backbone at ``precision`` inside the block (autocast dtype only: the
    weights are untouched), then restore what it was loaded with."""
    before = model.net.backbone_dtype
    model.net.backbone_dtype = resolve_dtype(precision)
    try:
        yield model
    finally:
        model.net.backbone_dtype = before
