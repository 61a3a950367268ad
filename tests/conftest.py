"""Shared test setup: thread count, no downloads, no autograd by default, and the shared
fixtures (a synthetic scene, a tiny random model).

Markers (registered in pyproject.toml): ``oracle`` compares with the official depth-anything-3
package (tests/oracle.py), ``host`` needs Blender's bpy, nerfstudio or Open3D, ``slow`` marks the
large-width oracle comparisons.  ``make test-fast`` leaves all three out.  ``gpu`` tests need a
CUDA GPU and skip without one (none here: they run on a CUDA machine with the same ``make test``).
"""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/oracle.py, tests/helpers.py, tests/source_tree.py

# Two cores here; keep torch from oversubscribing when pytest runs beside other work.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# No test may download anything.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests expect exact numbers: precision "auto" resolves to fp32 on the CPU here (and in every
# process a test starts); tests/test_precision.py covers the policy itself.
os.environ.setdefault("DA3P_CPU_PRECISION", "fp32")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _read_only(scene):
    """The scene with its arrays made read-only, so that tests sharing it cannot change it."""
    for name in ("images", "depth", "extrinsics", "intrinsics", "primitive_index"):
        getattr(scene, name).setflags(write=False)
    return scene


@pytest.fixture(scope="session")
def room_scene():
    """A synthetic room with exact ground truth: 5 views of 84 x 112, seed 3 (read-only arrays)."""
    from da3_plugins.core.synthetic import make_scene

    return _read_only(make_scene("room", num_views=5, height=84, width=112, seed=3))


@pytest.fixture(scope="session")
def small_room_scene():
    """A small synthetic room: 4 views of 42 x 56, seed 2 (read-only arrays)."""
    from da3_plugins.core.synthetic import make_scene

    return _read_only(make_scene("room", num_views=4, height=42, width=56, seed=2))


@pytest.fixture
def tiny_model():
    """A fresh da3-tiny with random weights (seed 0) on the CPU, one per test (tests train it)."""
    from da3_plugins.core.model import random_model

    return random_model("da3-tiny", seed=0, device="cpu")
