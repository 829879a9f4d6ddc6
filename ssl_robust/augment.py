"""Random augmentations as tensor operations; every draw comes from a given CPU generator, so a
seed fixes a batch.

Batch augmentations (DeACL's fine-tuning): ``random_resized_crop_flip`` and ``pad_crop_flip``.
``augment_pairs`` (head training, ``head.augment``) moves each image and its target together: a
class stays, a label or depth map is cropped and flipped with its image.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from ssl_robust.data.transforms import resize_map

HeadAugment = Literal["none", "flip", "crop_flip"]
HEAD_AUGMENTS = ("none", "flip", "crop_flip")


def random_resized_crop_flip(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (area fraction in ``scale``, aspect ratio in [3/4, 4/3]) and horizontal
    flip per sample, as one affine resampling of the batch back to its own size.

    Unlike torchvision's rejection sampling, a crop wider or taller than the image is clamped to
    the image side. All draws come from ``generator`` (on the CPU), so a seed fixes the batch.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator).exp()
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    centre_x = (torch.rand(b, generator=generator) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(b, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


def pad_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ``RandomCrop(size, padding) + RandomHorizontalFlip`` per sample: zero-pad every side
    by ``padding``, crop the image's own size at a random offset in [0, 2 * padding], flip with p 1/2.

    All draws come from ``generator`` (on the CPU), so a seed fixes the batch.
    """
    b, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator).tolist()
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator).tolist()
    flip = (torch.rand(b, generator=generator) < 0.5).tolist()
    crops = [padded[i, :, t:t + height, s:s + width] for i, (t, s) in enumerate(zip(top, left))]
    return torch.stack([c.flip(-1) if f else c for c, f in zip(crops, flip)])


def seed_padding(size: int) -> int:
    """The poster's RandomCrop padding, ``4 * size // 32`` (28 at 224): an eighth of the side."""
    return 4 * size // 32


def _flip(generator: torch.Generator) -> bool:
    return bool(torch.rand(1, generator=generator) < 0.5)


def _crop(image: torch.Tensor, size: int, generator: torch.Generator) -> tuple[int, int]:
    height, width = image.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"a random {size}x{size} crop needs images of at least that size, got {height}x{width}")
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return top, left


def augment_pairs(images: Sequence[torch.Tensor], targets: Sequence[torch.Tensor | int], mode: str, size: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch under ``head.augment``, stacked: (images [B,3,S,S], targets).

    - ``none``: as they are.
    - ``flip``: each image, with its map, flipped left-right with probability 1/2.
    - ``crop_flip``: a random S x S crop, then ``flip``. A classification image is first zero-padded
      by S/8 on every side (torchvision's ``RandomCrop(S, padding) + RandomHorizontalFlip``); a dense
      image, short side S, is cropped with its map, which is first resized to the image by nearest
      neighbour (mmseg's ``SmallestMaxSize + RandomCrop + RandomFlip``).
    """
    if mode not in HEAD_AUGMENTS:
        raise ValueError(f"head.augment: unknown mode {mode!r}; allowed: {list(HEAD_AUGMENTS)}")
    dense = isinstance(targets[0], torch.Tensor) and targets[0].dim() >= 2
    if not dense:
        labels = torch.as_tensor([int(t) for t in targets])
        x = torch.stack(list(images))
        if mode == "crop_flip":
            return pad_crop_flip(x, seed_padding(size), generator), labels
        if mode == "flip":
            flips = torch.rand(len(x), generator=generator) < 0.5
            return torch.where(flips[:, None, None, None], x.flip(-1), x), labels
        return x, labels
    out_images, out_maps = [], []
    for image, target in zip(images, targets):
        if tuple(target.shape[-2:]) != tuple(image.shape[-2:]):
            target = resize_map(target, tuple(image.shape[-2:]))
        if mode == "crop_flip":
            top, left = _crop(image, size, generator)
            image = image[..., top:top + size, left:left + size]
            target = target[..., top:top + size, left:left + size]
        if mode != "none" and _flip(generator):
            image, target = image.flip(-1), target.flip(-1)
        out_images.append(image)
        out_maps.append(target)
    return torch.stack(out_images), torch.stack(out_maps)
