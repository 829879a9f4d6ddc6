"""A deterministic synthetic data set that serves all three tasks with no network.

Each image is a textured background with one rectangular object. The object's class is the
classification label; the segmentation mask marks the object (its class) on a background class,
with a one-pixel ignore ring on the object's border; the depth map is a floor-like gradient with
the object standing in front of it, and a few invalid (zero) pixels.

Under ``sizing="square"`` every sample is generated at S x S. Under ``"short_side"`` it is
generated at a non-square native size (``native_shape``: 2S x 3S for even indices, 3S x 2S for odd
ones), the image resized to short side S (S x 1.5S or 1.5S x S) and the mask and depth kept at the
native size, so sliding windows, size batches and native-resolution scoring can be tested.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_robust.config import DataCfg
from ssl_robust.data.base import LOADERS, Split
from ssl_robust.data.catalog import SYNTHETIC_CLASSES, TaskInfo
from ssl_robust.data.transforms import Sizing, image_size_for, resize_image

NUM_OBJECT_CLASSES = SYNTHETIC_CLASSES
SPLIT_SIZES = {"train": 512, "val": 128, "test": 256}
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
PALETTE = np.array([[0.85, 0.2, 0.2], [0.2, 0.75, 0.25], [0.2, 0.3, 0.85], [0.9, 0.8, 0.2]])


def native_shape(index: int, size: int, sizing: Sizing) -> tuple[int, int]:
    """(height, width) a sample is generated at: S x S (square); 2S x 3S or 3S x 2S (short_side)."""
    if sizing == "square":
        return size, size
    return (2 * size, 3 * size) if index % 2 == 0 else (3 * size, 2 * size)


def synthetic_sample(index: int, size: int | tuple[int, int]
                     ) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """Image [3,H,W] in [0,1], class, mask [H,W] (background = NUM_OBJECT_CLASSES), depth [H,W] m.

    ``size``: S (H = W = S) or (H, W).
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(index)
    label = int(rng.integers(NUM_OBJECT_CLASSES))
    rows, cols = np.mgrid[0:h, 0:w].astype(float)
    rows, cols = rows / max(h - 1, 1), cols / max(w - 1, 1)
    background = 0.35 + 0.15 * np.sin(2 * np.pi * (rows * rng.uniform(1, 3) + cols * rng.uniform(1, 3)))
    image = np.repeat(background[None], 3, axis=0) * rng.uniform(0.7, 1.0, size=(3, 1, 1))
    height, width = (rng.uniform(0.35, 0.6, size=2) * np.array([h, w])).astype(int).clip(2, [h, w])
    top, left = rng.integers(0, h - height + 1), rng.integers(0, w - width + 1)
    inside = np.zeros((h, w), dtype=bool)
    inside[top:top + height, left:left + width] = True
    image[:, inside] = PALETTE[label][:, None] * rng.uniform(0.8, 1.0)
    image += rng.normal(0, 0.03, size=image.shape)
    mask = np.full((h, w), NUM_OBJECT_CLASSES, dtype=np.int64)
    mask[inside] = label
    border = inside & ~np.pad(inside, 1)[2:, 1:-1] | inside & ~np.pad(inside, 1)[:-2, 1:-1]
    border |= inside & ~np.pad(inside, 1)[1:-1, 2:] | inside & ~np.pad(inside, 1)[1:-1, :-2]
    mask[border] = 255
    depth = 8.0 - 6.0 * rows
    depth[inside] = 1.0 + label
    depth[rng.random((h, w)) < 0.05] = 0.0
    return (
        torch.from_numpy(image.clip(0, 1)).float(),
        label,
        torch.from_numpy(mask),
        torch.from_numpy(depth).float(),
    )


class SyntheticDataset(Dataset):
    def __init__(self, split: Split, task: str, image_size: int, sizing: Sizing = "square") -> None:
        self.offset, self.length = SPLIT_OFFSETS[split], SPLIT_SIZES[split]
        self.task, self.image_size = task, image_size
        self.sizing: Sizing = "square" if task == "classification" else sizing

    def __len__(self) -> int:
        return self.length

    def native_size(self, i: int) -> tuple[int, int]:
        return native_shape(self.offset + i, self.image_size, self.sizing)

    def __getitem__(self, i: int):
        shape = self.native_size(i)
        image, label, mask, depth = synthetic_sample(self.offset + i, shape)
        image = resize_image(image, image_size_for(*shape, self.image_size, self.sizing))
        target = {"classification": label, "segmentation": mask, "depth": depth}[self.task]
        return image, target


@LOADERS.register("synthetic")
def build_synthetic(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                    sizing: Sizing = "square") -> Dataset:
    return SyntheticDataset(split, info.task, image_size, sizing)
