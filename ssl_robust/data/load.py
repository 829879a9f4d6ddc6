"""``load_split(cfg, split, image_size, sizing=...)``: one split of a configured data set, built by its loader."""
from __future__ import annotations

from torch.utils.data import Dataset

from ssl_robust.data import classification, depth, segmentation, synthetic  # noqa: F401  (register loaders)
from ssl_robust.data.base import LOADERS, Split, deterministic_subset, size_batches  # noqa: F401  (re-export)
from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.data.transforms import Sizing
from ssl_robust.config import DataCfg

def task_info(cfg: DataCfg) -> TaskInfo:
    """The configured task's facts on the configured data set."""
    return DATASETS.get(cfg.name).infos[cfg.resolved_task]


def load_split(cfg: DataCfg, split: Split, image_size: int, seed: int = 0,
               sizing: Sizing = "square") -> tuple[Dataset, TaskInfo]:
    """Build one split of the configured data set, limited to the configured number of items.

    ``sizing="square"``: images and targets at image_size x image_size. ``"short_side"``: images
    with their short side image_size (aspect ratio kept), targets at native resolution; batch such
    a split with ``DataLoader(dataset, batch_sampler=size_batches(dataset, batch_size))``.
    Classification data sets are always square.
    """
    if sizing not in ("square", "short_side"):
        raise ValueError(f"unknown sizing {sizing!r}; expected 'square' or 'short_side'")
    info = task_info(cfg)
    dataset = LOADERS.get(cfg.name)(cfg, split, info, image_size, sizing=sizing)
    limit = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_samples}[split]
    return deterministic_subset(dataset, limit, seed), info


def slide_stride(cfg: DataCfg, crop: int) -> int:
    """``data.slide_stride``, or round(2/3 of the window) when unset (345 for 518, 149 for 224)."""
    return cfg.slide_stride if cfg.slide_stride is not None else max(1, round(2 * crop / 3))
