"""Resizing that keeps each target's meaning: bilinear images, nearest masks and depth in metres."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def image_to_tensor(image: Image.Image | np.ndarray, size: int | None) -> torch.Tensor:
    """RGB image -> float32 [3, size, size] in [0, 1] (bilinear, antialiased)."""
    array = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image)
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255.0
    if size is not None and tuple(tensor.shape[1:]) != (size, size):
        tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0].clamp_(0, 1)
    return tensor


def mask_to_tensor(mask: np.ndarray, size: int | None) -> torch.Tensor:
    """Label map -> long [size, size] by nearest neighbour (labels are never blended)."""
    tensor = torch.from_numpy(np.ascontiguousarray(mask)).long()
    if size is not None and tuple(tensor.shape) != (size, size):
        tensor = F.interpolate(tensor[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return tensor


def depth_to_tensor(depth: np.ndarray, size: int | None) -> torch.Tensor:
    """Depth map in metres -> float32 [size, size] by nearest neighbour (0 stays invalid)."""
    tensor = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    if size is not None and tuple(tensor.shape) != (size, size):
        tensor = F.interpolate(tensor[None, None], size=(size, size), mode="nearest")[0, 0]
    return tensor
