"""Data sets checked in the driver before Ray starts: a missing root or a file that does not parse
fails once, with the loader's one-line message, instead of inside every trial (which Ray retries).

``check_available(data_cfgs)`` builds the train and test splits of each distinct data config the
way a trial will (file lists, headers and label files; CIFAR's pickles are parsed and checked), and
keeps nothing. With ``data.download: true`` the download happens here, once, instead of in many
trials at the same time. Which data configs a grid reads is the grid's to say
(``sweep_config.grid_data``).
"""
from __future__ import annotations

from typing import Iterable

from ssl_robust.config import DataCfg
from ssl_robust.data.base import DatasetNotFoundError
from ssl_robust.data.catalog import DATASETS
from ssl_robust.data.load import load_split
from ssl_robust.data.safe_pickle import DataFileError

PREFLIGHT_IMAGE_SIZE = 32  # the image size does not change which files a split reads


def check_available(data_cfgs: Iterable[DataCfg]) -> int:
    """Build the train and test splits of every distinct data config that reads files.

    A data set that is missing or unreadable raises what its loader raises (``DatasetNotFoundError``,
    ``DataFileError``), naming the data set and its root or file; with several, one error of the first
    one's kind names each on its own line. Returns how many distinct data configs were checked.
    """
    checked: set[str] = set()
    problems: list[Exception] = []
    for cfg in data_cfgs:
        key = cfg.model_dump_json()
        if key in checked or not DATASETS.get(cfg.name).needs_root:
            continue
        checked.add(key)
        try:
            for split in ("train", "test"):
                load_split(cfg, split, PREFLIGHT_IMAGE_SIZE)
        except (DatasetNotFoundError, DataFileError) as err:
            if str(err) not in {str(p) for p in problems}:
                problems.append(err)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        lines = "\n".join(f"  {problem}" for problem in problems)
        raise type(problems[0])(f"{len(problems)} data sets cannot be read:\n{lines}")
    return len(checked)
