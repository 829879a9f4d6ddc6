"""Checking a grid's data before anything runs: every unreadable data set named in one error, each
root's missing files named once."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_robust.config import DataCfg
from ssl_robust.data.base import DatasetNotFoundError
from ssl_robust.data.preflight import check_available

from .fixtures import write_cifar10


def test_every_missing_data_set_of_a_grid_is_named_in_one_error(tmp_path: Path) -> None:
    cfgs = [DataCfg(name=name, root=tmp_path / name) for name in ("cifar10", "cifar100", "nyuv2")]
    with pytest.raises(DatasetNotFoundError) as caught:
        check_available([*cfgs, cfgs[0]])
    lines = str(caught.value).splitlines()
    assert lines[0] == "3 data sets cannot be read:"
    assert [line.split("'")[1] for line in lines[1:]] == ["cifar10", "cifar100", "nyuv2"]


def test_one_missing_data_set_is_its_own_error(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "cifar10")
    with pytest.raises(DatasetNotFoundError, match=r"^data set 'cifar100': searched .*cifar100: it holds none"):
        check_available([DataCfg(name="cifar10", root=tmp_path / "cifar10"),
                         DataCfg(name="cifar100", root=tmp_path / "cifar100")])


def test_an_empty_root_lists_its_expected_files_once(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as caught:
        check_available([DataCfg(name="cifar10", root=tmp_path)])
    assert str(caught.value).count("data_batch_1") == 1 and "it holds none of the expected files" in str(caught.value)


def test_a_partial_root_names_only_what_is_missing(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing \['cifar-10-batches-py/test_batch'\] of the expected 7"):
        check_available([DataCfg(name="cifar10", root=tmp_path)])
