"""Data sets by name: ``DATASETS.get(name)`` and ``load_split(cfg, split, image_size)``."""
from ssl_robust.data.base import DATASETS, DatasetNotFoundError, DatasetSpec, TaskInfo, load_split
from ssl_robust.data import synthetic  # noqa: F401  (registers)
from ssl_robust.data import classification, depth, segmentation  # noqa: F401  (register)

__all__ = ["DATASETS", "DatasetNotFoundError", "DatasetSpec", "TaskInfo", "load_split"]
