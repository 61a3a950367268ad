"""da3_plugins.core: the Depth Anything 3 network and everything around it, with no host-tool
dependencies.

Imports torch, numpy, safetensors and pillow only (never bpy, open3d or nerfstudio).  Importing
this package is cheap: the torch-based parts load on first use, and the numpy-only modules
(``conventions``, ``reconstruction``) can be imported without torch installed.
"""

from importlib import import_module

_LAZY = {
    "CHECKPOINT_LICENSES": "model.config",
    "HUB_REPOS": "model.config",
    "PRESETS": "model.config",
    "NestedConfig": "model.config",
    "NetConfig": "model.config",
    "get_preset": "model.config",
    "DA3Model": "model.da3model",
    "load_model": "model.da3model",
    "random_model": "model.da3model",
    "Gaussians": "model.outputs",
    "NetworkOutput": "model.outputs",
    "Reconstruction": "reconstruction",
    "GaussianSet": "reconstruction",
    "PointCloud": "reconstruction",
    "SceneFileError": "reconstruction",
    "SceneOptions": "options",
    "ReconstructOptions": "options",
    "UserInputError": "errors",
    "OptionError": "errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
