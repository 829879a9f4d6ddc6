"""Data sets by name. This package's ``__init__`` stays light (no torch): ``DATASETS`` declares
every data set; ``ssl_robust.data.load.load_split`` builds one split of one."""
from ssl_robust.data.catalog import DATASETS, DatasetSpec, TaskInfo

__all__ = ["DATASETS", "DatasetSpec", "TaskInfo"]
