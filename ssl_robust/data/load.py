"""``load_split(cfg, split, image_size, sizing=...)``: one split of a configured data set, built by its loader."""
from __future__ import annotations

from dataclasses import replace
from typing import Literal

from torch.utils.data import Dataset

from ssl_robust.data import classification, depth, imagenet, segmentation, synthetic  # noqa: F401  (register loaders)
from ssl_robust.data.base import (LOADERS, Split, deterministic_subset, native_size,  # noqa: F401  (re-export)
                                  size_batches)
from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.data.transforms import Sizing
from ssl_robust.config import DataCfg

SplitSizing = Sizing | Literal["native"]


def task_info(cfg: DataCfg) -> TaskInfo:
    """The configured task's facts on the configured data set; VOC without its background
    (``data.voc_background: exclude``) has 20 classes."""
    info = DATASETS.get(cfg.name).infos[cfg.resolved_task]
    if cfg.voc_background == "exclude":
        return replace(info, num_classes=info.num_classes - 1)
    return info


def load_split(cfg: DataCfg, split: Split, image_size: int, seed: int = 0,
               sizing: SplitSizing = "square") -> tuple[Dataset, TaskInfo]:
    """Build one split of the configured data set, limited to the configured number of items.

    ``sizing="square"``: images and targets at image_size x image_size. ``"short_side"``: images
    with their short side image_size (aspect ratio kept), targets at native resolution; batch such
    a split with ``DataLoader(dataset, batch_sampler=size_batches(dataset, batch_size))``.
    ``"native"``: images and targets at their native resolution, which the chosen items must share
    (``data.eval: whole``). Classification data sets are always square.
    """
    if sizing not in ("square", "short_side", "native"):
        raise ValueError(f"unknown sizing {sizing!r}; expected 'square', 'short_side' or 'native'")
    info = task_info(cfg)
    limit = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_samples}[split]
    if sizing == "native":
        dataset = _native(cfg, split, info, image_size, limit, seed)
    else:
        dataset = LOADERS.get(cfg.name)(cfg, split, info, image_size, sizing=sizing)
    return deterministic_subset(dataset, limit, seed), info


def _native(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int, limit: int | None, seed: int) -> Dataset:
    """The split with its images at native size: built short-side at the native short side of its
    chosen items, which must all have one native size (a single batch shape, no resampling)."""
    build = LOADERS.get(cfg.name)
    probe = deterministic_subset(build(cfg, split, info, image_size, sizing="short_side"), limit, seed)
    sizes = sorted({native_size(probe, i) for i in range(len(probe))})
    if len(sizes) != 1:
        raise ValueError(f"data.eval='whole' runs each test image at its native size, which must be one "
                         f"size; {cfg.name!r} has {len(sizes)} (e.g. {sizes[:3]}): use data.eval='slide'")
    dataset = build(cfg, split, info, min(sizes[0]), sizing="short_side")
    if len(dataset) and native_size(dataset, 0) != sizes[0]:
        raise ValueError(f"data.eval='whole' needs test images of a fixed native size; {cfg.name!r} "
                         f"generates them at the requested size: use data.eval='slide'")
    return dataset


def slide_stride(cfg: DataCfg, crop: int) -> int:
    """``data.slide_stride`` for ``crop``-px windows (an int for every window, or a per-size
    mapping), or round(2/3 of the window) when unset (345 for 518, 149 for 224); never more than
    the window, so every pixel is covered."""
    stride = cfg.slide_stride
    if isinstance(stride, dict):
        if crop not in stride:
            raise ValueError(f"data.slide_stride gives strides for {sorted(stride)}-px windows, not for {crop} px")
        stride = stride[crop]
    stride = max(1, round(2 * crop / 3)) if stride is None else stride
    if stride > crop:
        raise ValueError(f"data.slide_stride={stride} exceeds the {crop}-px window: pixels between windows "
                         f"would never be scored")
    return stride
