"""What every loader shares: the builder registry, root checks, the split rule, deterministic subsets."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import torch
from torch.utils.data import Dataset, Subset

from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.registry import Registry
from ssl_robust.config import DataCfg


Split = Literal["train", "val", "test"]


Builder = Callable[[DataCfg, Split, TaskInfo, int], Dataset]
"""``build(cfg, split, info, image_size)`` returns a torch Dataset of ``(image, target)`` items:
image float32 [3, H, W] in [0, 1]; target a class index (classification), a long [H, W] mask with
``info.ignore_index`` for unlabelled pixels (segmentation) or a float32 [H, W] depth map in metres
with 0 where invalid (depth)."""

LOADERS: Registry[Builder] = Registry("data set loader")


class DatasetNotFoundError(FileNotFoundError):
    """A data root that is missing or incomplete; the message says what to put where."""


def require_files(dataset: str, root: Path | None, expected: list[str]) -> Path:
    """Fail before any work if ``root`` lacks any of ``expected`` (paths relative to root)."""
    how_to_get = DATASETS.get(dataset).how_to_get
    if root is None:
        raise DatasetNotFoundError(
            f"data set {dataset!r} needs data.root; expected files: {expected}. {how_to_get}"
        )
    root = Path(root).expanduser()
    missing = [p for p in expected if not (root / p).exists()]
    if missing:
        raise DatasetNotFoundError(
            f"data set {dataset!r}: searched {root}, missing {missing} "
            f"(expected {expected}). {how_to_get}"
        )
    return root


def deterministic_subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """The same ``n`` items for the same seed, in every cell of a sweep."""
    total = len(dataset)  # type: ignore[arg-type]
    if n is None or n >= total:
        return dataset
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(total, generator=gen)[:n].sort().values.tolist()
    return Subset(dataset, index)


def train_val_indices(total: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Carve a validation split off an official train split, deterministically."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=gen).tolist()
    n_val = min(max(1, int(round(total * val_fraction))), total - 1) if total > 1 else 0
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def pick_split(total: int, split: Split, val_fraction: float) -> list[int]:
    """Indices of ``split``: train/val carved from the official train split, test = all of it."""
    if split == "test":
        return list(range(total))
    train, val = train_val_indices(total, val_fraction, seed=0)
    return train if split == "train" else val
