"""da3-plugins: Depth Anything 3 for Blender, Open3D and nerfstudio.

The model lives in :mod:`da3_plugins.core`; host adapters live beside it.
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: importing the package does not import torch
    if name in ("load_model", "random_model", "DA3Model"):
        from . import core

        return getattr(core, name)
    raise AttributeError(f"module 'da3_plugins' has no attribute {name!r}")
