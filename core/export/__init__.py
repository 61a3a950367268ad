"""Writers for reconstructions: point clouds, Gaussian splats, glTF, COLMAP, nerfstudio, depth images."""
