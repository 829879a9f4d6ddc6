"""``load_split(cfg, split, image_size)``: one split of a configured data set, built by its loader."""
from __future__ import annotations


from torch.utils.data import Dataset

from ssl_robust.data import classification, depth, segmentation, synthetic  # noqa: F401  (register loaders)
from ssl_robust.data.base import LOADERS, Split, deterministic_subset
from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.config import DataCfg



def task_info(cfg: DataCfg) -> TaskInfo:
    """The configured task's facts on the configured data set."""
    return DATASETS.get(cfg.name).infos[cfg.resolved_task]


def load_split(cfg: DataCfg, split: Split, image_size: int, seed: int = 0) -> tuple[Dataset, TaskInfo]:
    """Build one split of the configured data set, limited to the configured number of items."""
    info = task_info(cfg)
    dataset = LOADERS.get(cfg.name)(cfg, split, info, image_size)
    limit = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_samples}[split]
    return deterministic_subset(dataset, limit, seed), info
