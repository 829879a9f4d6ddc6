"""What every loader shares: the builder registry, root checks, the split rule, deterministic subsets,
and batches of equal-sized items."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Protocol

import torch
from torch.utils.data import Dataset, Subset

from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.registry import Registry
from ssl_robust.config import DataCfg
from ssl_robust.data.transforms import Sizing


Split = Literal["train", "val", "test"]


class Builder(Protocol):
    """``build(cfg, split, info, image_size, sizing="square")`` returns a torch Dataset of
    ``(image, target)`` items: image float32 [3, H, W] in [0, 1]; target a class index
    (classification), a long [H, W] mask with ``info.ignore_index`` for unlabelled pixels
    (segmentation) or a float32 [H, W] depth map in metres with 0 where invalid (depth).

    ``sizing`` (``transforms.Sizing``): ``"square"`` gives image and target at S x S;
    ``"short_side"`` gives the image with its short side S (aspect ratio kept) and the target at
    its native resolution. Classification ignores it (always square). Dense data sets also offer
    ``native_size(i) -> (H, W)``, the native (target) resolution of item ``i`` read cheaply (an
    image header, not the pixels), which ``size_batches`` uses.
    """

    def __call__(self, cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                 sizing: Sizing = "square") -> Dataset: ...


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
        what = (f"it holds none of the expected files {expected}" if len(missing) == len(expected) else
                f"missing {missing} of the expected {len(expected)} files")
        raise DatasetNotFoundError(f"data set {dataset!r}: searched {root}: {what}. {how_to_get}")
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


def native_size(dataset: Dataset, i: int) -> tuple[int, int]:
    """The native (H, W) of item ``i``, through any nesting of ``Subset``.

    Uses the data set's ``native_size(i)`` when it has one (cheap: headers only); otherwise loads
    the item and takes the target's last two dims (dense targets) or the image's.
    """
    while isinstance(dataset, Subset):
        dataset, i = dataset.dataset, dataset.indices[i]
    lookup = getattr(dataset, "native_size", None)
    if lookup is not None:
        height, width = lookup(i)
        return int(height), int(width)
    image, target = dataset[i]
    shape = target.shape if isinstance(target, torch.Tensor) and target.ndim >= 2 else image.shape
    return int(shape[-2]), int(shape[-1])


def size_batches(dataset: Dataset, batch_size: int) -> list[list[int]]:
    """Batches of indices whose items share one native size, for ``DataLoader(batch_sampler=...)``.

    Deterministic: groups in order of their first index, indices ascending within a group, each
    group cut into batches of ``batch_size`` (the last one of a group may be smaller). Every index
    appears exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple[int, int], list[int]] = {}
    for i in range(len(dataset)):  # type: ignore[arg-type]
        groups.setdefault(native_size(dataset, i), []).append(i)
    return [group[k:k + batch_size] for group in groups.values() for k in range(0, len(group), batch_size)]
