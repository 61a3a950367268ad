"""Writers for reconstructions: point clouds, Gaussian splats, glTF, COLMAP, nerfstudio, depth images.

numpy + Pillow only (no torch): every writer writes under a temporary name and renames, so an
interrupted export leaves nothing behind, and none modifies the reconstruction.  (The video
writer also uses torch and OpenCV, imported when called: it renders with the core's rasteriser.)
"""

from .colmap import write_colmap
from .depth_images import colorize_confidence, colorize_depth, depth_to_uint16, write_depth_images
from .gltf import write_glb
from .nerfstudio import write_nerfstudio
from .ply import read_gaussian_ply, write_gaussian_ply, write_point_ply
from .preview import preview_image, write_preview
from .video import write_gaussian_video

__all__ = [
    "colorize_confidence",
    "colorize_depth",
    "depth_to_uint16",
    "read_gaussian_ply",
    "write_colmap",
    "write_depth_images",
    "write_gaussian_ply",
    "write_gaussian_video",
    "write_glb",
    "write_nerfstudio",
    "write_point_ply",
    "preview_image",
    "write_preview",
]
