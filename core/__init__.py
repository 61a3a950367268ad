"""da3_plugins.core: the Depth Anything 3 network, with no host-tool dependencies.

Imports torch, numpy, safetensors and pillow only (never bpy, open3d or nerfstudio).
"""

from .config import CHECKPOINT_LICENSES, HUB_REPOS, PRESETS, NestedConfig, NetConfig, get_preset
from .model import DA3Model, load_model, random_model
from .outputs import Gaussians, NetworkOutput

__all__ = [
    "CHECKPOINT_LICENSES",
    "HUB_REPOS",
    "PRESETS",
    "DA3Model",
    "Gaussians",
    "NestedConfig",
    "NetConfig",
    "NetworkOutput",
    "get_preset",
    "load_model",
    "random_model",
]
