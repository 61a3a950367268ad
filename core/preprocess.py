"""Resizing photos to the network's input, exactly as the official DA3 input processor does.

For each photo (RGB uint8):

1. boundary resize so that the longest (``upper_bound_*``) or shortest (``lower_bound_*``)
   side becomes ``process_res``: ``new = max(1, round(dim * scale))`` with Python's
   round-half-to-even, skipped when that side already has the size; OpenCV cubic when
   enlarging, area when shrinking;
2. sides to multiples of 14: ``*_resize`` resizes each side to its nearest multiple (ties up;
   cubic if either side grows, else area), ``*_crop`` centre-crops each side down to a multiple;
3. photos of different processed sizes are centre-cropped to the smallest height and width.

Each step is also recorded as an affine map of continuous pixel coordinates (a resize from
w to w' scales u by w'/w exactly; a crop by ``off`` subtracts it), so intrinsics can be
carried to the processed images and back to the originals without rounding.

Streaming (``images.iter_processed``) needs no pixels to know the sizes: :func:`resize_plan` /
:func:`processed_size` give steps 1-2 from a photo's size alone (:func:`process_image` runs
that same plan), :func:`crop_target` step 3's common size, and :func:`process_one` steps 1-3
for one photo, bit-identical to :func:`process_images` on the whole list.

Deliberate difference: in step 3 the official pipeline shifts K by ``delta // 2`` while
torchvision's CenterCrop cuts at ``round(delta / 2)``; for some odd differences the two
disagree by one pixel.  We cut where the official cuts (same pixels) and shift K by the
offset actually cut, so our K matches our pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .errors import UserInputError
from .options import PATCH_SIZE as PATCH
from .options import ReconstructOptions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ProcessedImage:
    """One resized photo: ``pixels`` (h, w, 3) uint8 and ``transform`` (3, 3), the affine map
    from original to processed continuous pixel coordinates."""

    pixels: np.ndarray
    transform: np.ndarray


def _cv2():
    import cv2

    return cv2


def _resize(pixels: np.ndarray, new_w: int, new_h: int, enlarge: bool) -> np.ndarray:
    cv2 = _cv2()
    interp = cv2.INTER_CUBIC if enlarge else cv2.INTER_AREA
    return cv2.resize(pixels, (new_w, new_h), interpolation=interp)


def _scale_matrix(sx: float, sy: float) -> np.ndarray:
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def _shift_matrix(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy], [0.0, 0.0, 1.0]])


def _nearest_multiple(x: int, p: int = PATCH) -> int:
    down = (x // p) * p
    up = down + p
    return up if abs(up - x) <= abs(x - down) else down


def check_method(process_res: int, process_res_method: str) -> None:
    """Validate a size and method as :class:`~.options.ReconstructOptions` does (OptionError)."""
    ReconstructOptions(process_res=process_res, process_res_method=process_res_method)


def resize_plan(h: int, w: int, process_res: int, process_res_method: str, name: str = "image"):
    """Steps 1 and 2 for an h x w photo, from its size alone: the list of operations
    (``("resize", w, h, new_w, new_h, enlarge)`` / ``("crop", left, top, new_w, new_h)``) and
    the processed (h', w').  The one place the sizes are computed (:func:`process_image` runs
    the plan, :func:`processed_size` returns its size)."""
    steps = []
    side = max(w, h) if process_res_method.startswith("upper") else min(w, h)
    if side != process_res:
        scale = process_res / float(side)
        new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        steps.append(("resize", w, h, new_w, new_h, scale > 1.0))
        w, h = new_w, new_h
    if process_res_method.endswith("resize"):
        new_w, new_h = max(1, _nearest_multiple(w)), max(1, _nearest_multiple(h))
        if (new_w, new_h) != (w, h):
            steps.append(("resize", w, h, new_w, new_h, new_w > w or new_h > h))
            w, h = new_w, new_h
    else:
        new_w, new_h = (w // PATCH) * PATCH, (h // PATCH) * PATCH
        if (new_w, new_h) != (w, h):
            steps.append(("crop", (w - new_w) // 2, (h - new_h) // 2, new_w, new_h))
            w, h = new_w, new_h
    if w < PATCH or h < PATCH:
        raise UserInputError(f"{name}: the aspect ratio is too extreme: it processes to {w}x{h} pixels, "
                             f"below one {PATCH}-pixel patch; crop it or raise process_res")
    return steps, (h, w)


def processed_size(h: int, w: int, process_res: int = 504, process_res_method: str = "upper_bound_resize",
                   *, name: str = "image") -> Tuple[int, int]:
    """(h', w') that :func:`process_image` gives an h x w photo (steps 1 and 2), from the size
    alone; raises the same errors (a bad method, an aspect ratio too extreme)."""
    check_method(process_res, process_res_method)
    return resize_plan(int(h), int(w), process_res, process_res_method, name)[1]


def _run_plan(pixels: np.ndarray, steps) -> ProcessedImage:
    transform = np.eye(3)
    for step in steps:
        if step[0] == "resize":
            _, w, h, new_w, new_h, enlarge = step
            # the first resize may start from a reduced decode (fast_decode): the target is absolute
            pixels = _resize(pixels, new_w, new_h, enlarge=enlarge)
            transform = _scale_matrix(new_w / w, new_h / h) @ transform
        else:
            _, left, top, new_w, new_h = step
            pixels = pixels[top:top + new_h, left:left + new_w]
            transform = _shift_matrix(left, top) @ transform
    return ProcessedImage(pixels=np.ascontiguousarray(pixels), transform=transform)


def process_image(pixels: np.ndarray, process_res: int = 504,
                  process_res_method: str = "upper_bound_resize", name: str = "image") -> ProcessedImage:
    """Steps 1 and 2 for one (H, W, 3) uint8 RGB photo."""
    check_method(process_res, process_res_method)
    h, w = pixels.shape[:2]
    return _run_plan(pixels, resize_plan(h, w, process_res, process_res_method, name)[0])


def crop_target(sizes) -> Tuple[int, int]:
    """Step 3's common size: the smallest processed height and width of (h, w) ``sizes``."""
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if len(sizes) == 0:
        raise ValueError("crop_target: no sizes given")
    return int(sizes[:, 0].min()), int(sizes[:, 1].min())


def _crop_to(im: ProcessedImage, target_hw: Tuple[int, int], name: str = "image") -> ProcessedImage:
    """Step 3 for one image: centre-crop to ``target_hw`` (torchvision's CenterCrop offset)."""
    h, w = im.pixels.shape[:2]
    min_h, min_w = target_hw
    if (h, w) == (min_h, min_w):
        return im
    if h < min_h or w < min_w:
        raise ValueError(f"{name}: processed to {w}x{h} pixels, smaller than the common {min_w}x{min_h}")
    # torchvision's CenterCrop offset: int(round(delta / 2.0)), half to even
    top, left = int(round((h - min_h) / 2.0)), int(round((w - min_w) / 2.0))
    pixels = im.pixels[top:top + min_h, left:left + min_w]
    return ProcessedImage(np.ascontiguousarray(pixels), _shift_matrix(left, top) @ im.transform)


def unify_sizes(images: Sequence[ProcessedImage]) -> List[ProcessedImage]:
    """Step 3: centre-crop every image to the smallest processed height and width."""
    sizes = {im.pixels.shape[:2] for im in images}
    if len(sizes) <= 1:
        return list(images)
    target = crop_target(sorted(sizes))
    return [_crop_to(im, target) for im in images]


def process_one(pixels: np.ndarray, process_res: int, process_res_method: str, target_hw: Tuple[int, int],
                name: str = "image", *, size_hw: Optional[Tuple[int, int]] = None) -> ProcessedImage:
    """Steps 1-3 for one photo, given step 3's common size ``target_hw`` (:func:`crop_target`
    of every photo's :func:`processed_size`): the pixels and transform :func:`process_images`
    gives this photo in the whole batch.  ``size_hw``: the photo's true upright size when
    ``pixels`` is a reduced decode of it (the plan and the transform follow the true size)."""
    check_method(process_res, process_res_method)
    h, w = size_hw if size_hw is not None else pixels.shape[:2]
    steps = resize_plan(int(h), int(w), process_res, process_res_method, name)[0]
    if pixels.shape[:2] != (h, w) and (not steps or steps[0][0] != "resize"):
        raise ValueError(f"{name}: pixels of {pixels.shape[1]}x{pixels.shape[0]} cannot stand for {w}x{h}")
    return _crop_to(_run_plan(pixels, steps), target_hw, name)


def process_images(images: Sequence[np.ndarray], process_res: int = 504,
                   process_res_method: str = "upper_bound_resize",
                   names: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(H_i, W_i, 3) uint8 photos -> (N, h, w, 3) uint8 processed batch and (N, 3, 3) transforms."""
    names = list(names) if names is not None else [f"images[{i}]" for i in range(len(images))]
    done = unify_sizes([process_image(p, process_res, process_res_method, n) for p, n in zip(images, names)])
    return np.stack([d.pixels for d in done]), np.stack([d.transform for d in done])


def normalize(batch: np.ndarray):
    """(N, h, w, 3) uint8 -> (N, 3, h, w) float32 torch tensor, ImageNet-normalised like
    torchvision's ToTensor + Normalize (x / 255, then (x - mean) / std, in float32)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def transform_intrinsics(k: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Intrinsics of the original photo (N, 3, 3) -> of the processed image: T @ K."""
    return np.asarray(transform, dtype=np.float64) @ np.asarray(k, dtype=np.float64)
