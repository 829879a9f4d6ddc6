"""Resizing that keeps each target's meaning: bilinear images, nearest masks and depth in metres.

Two sizings (``Sizing``), chosen per split by ``load_split``:

- ``"square"``: image, mask and depth all resized to S x S (the aspect ratio is not kept).
- ``"short_side"``: the image is resized so its short side is S, keeping the aspect ratio (the long
  side rounded to an integer); the target keeps its native resolution (``size=None`` below).

Masks and depth use ``nearest-exact``: its source pixel for output pixel ``i`` is
``floor((i + 0.5) * in / out)``, i.e. pixel centres line up with those of the antialiased bilinear
image (``align_corners=False``), as PIL's ``Image.NEAREST`` (up to exact ties). Plain ``nearest`` uses
``floor(i * in / out)``, which shifts labels by about half an input pixel towards the top left.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Sizing = Literal["square", "short_side"]
Size = int | tuple[int, int]  # S (square S x S) or (height, width)


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def short_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) scaled so the shorter side is ``short``; the longer side rounded."""
    if height <= width:
        return short, max(short, int(round(width * short / height)))
    return max(short, int(round(height * short / width))), short


def image_size_for(height: int, width: int, image_size: int, sizing: Sizing) -> tuple[int, int]:
    """The (height, width) an image of native ``height x width`` is resized to under ``sizing``."""
    if sizing == "square":
        return image_size, image_size
    if sizing == "short_side":
        return short_side_size(height, width, image_size)
    raise ValueError(f"unknown sizing {sizing!r}; expected 'square' or 'short_side'")


def resize_image(tensor: torch.Tensor, size: Size) -> torch.Tensor:
    """float [3, H, W] in [0, 1] -> [3, *size] (bilinear, antialiased, clamped to [0, 1])."""
    out = _hw(size)
    if tuple(tensor.shape[-2:]) == out:
        return tensor
    return F.interpolate(tensor[None], size=out, mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp_(0, 1)


def image_to_tensor(image: Image.Image | np.ndarray, size: Size | None) -> torch.Tensor:
    """RGB image -> float32 [3, size] in [0, 1] (bilinear, antialiased).

    ``size``: S for S x S, (height, width), or None to keep the native size.
    """
    array = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255.0
    return tensor if size is None else resize_image(tensor, size)


def sized_image_to_tensor(image: Image.Image | np.ndarray, image_size: int, sizing: Sizing) -> torch.Tensor:
    """RGB image -> float32 [3, H, W] in [0, 1], sized by ``sizing`` (see ``image_size_for``)."""
    tensor = image_to_tensor(image, None)
    return resize_image(tensor, image_size_for(*tensor.shape[-2:], image_size, sizing))


def target_size(image_size: int, sizing: Sizing) -> int | None:
    """The ``size`` argument of ``mask_to_tensor``/``depth_to_tensor``: S, or None (native)."""
    return image_size if sizing == "square" else None


def mask_to_tensor(mask: np.ndarray, size: Size | None) -> torch.Tensor:
    """Label map -> long [size] by nearest neighbour, ``nearest-exact`` (labels are never blended).

    ``size``: S for S x S, (height, width), or None to keep the native resolution.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(mask)).long()
    return tensor if size is None else resize_map(tensor, size)


def depth_to_tensor(depth: np.ndarray, size: Size | None) -> torch.Tensor:
    """Depth map in metres -> float32 [size] by ``nearest-exact`` (0 stays invalid).

    ``size``: S for S x S, (height, width), or None to keep the native resolution.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    return tensor if size is None else resize_map(tensor, size)


def resize_map(tensor: torch.Tensor, size: Size) -> torch.Tensor:
    """A label or depth map [h, w] resized to ``size`` by ``nearest-exact``, keeping its dtype
    (labels are never blended; a depth of 0 stays invalid)."""
    if tuple(tensor.shape[-2:]) == _hw(size):
        return tensor
    return F.interpolate(tensor[None, None].float(), size=_hw(size), mode="nearest-exact")[0, 0].to(tensor.dtype)
