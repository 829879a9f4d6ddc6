"""The data-set catalog (``ssl_robust.data.catalog``): the real data sets are declared with the task
metadata heads and metrics rely on, each with a loader, and no loader is undeclared."""
from __future__ import annotations

import pytest

from ssl_robust.config import DataCfg
from ssl_robust.data import DATASETS
from ssl_robust.data.base import DatasetNotFoundError
from ssl_robust.data.load import load_split

EXPECTED = {  # name: (task, num_classes, ignore_index)
    "cifar10": ("classification", 10, 255),
    "cifar100": ("classification", 100, 255),
    "stl10": ("classification", 10, 255),
    "voc2012": ("segmentation", 21, 255),
    "ade20k": ("segmentation", 150, 255),
    "cityscapes": ("segmentation", 19, 255),
    "nyuv2": ("depth", 0, 255),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_with_task_info(name):
    spec = DATASETS.get(name)
    task, num_classes, ignore_index = EXPECTED[name]
    assert list(spec.infos) == [task] and DataCfg(name=name).resolved_task == task
    info = spec.infos[task]
    assert (info.num_classes, info.ignore_index) == (num_classes, ignore_index)
    assert spec.needs_root and "http" in spec.how_to_get


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_root_names_the_data_set(name):
    with pytest.raises(DatasetNotFoundError, match=f"{name}.*needs data.root"):
        load_split(DataCfg(name=name), "test", image_size=28)


def test_every_declared_data_set_has_a_loader_and_no_loader_is_undeclared() -> None:
    from ssl_robust.data.base import LOADERS

    assert LOADERS.names() == DATASETS.names()
