"""Tiny official-format data sets written into a fresh tmp_path: ``(root, what was written)``."""
from __future__ import annotations

from pathlib import Path

import pytest

from .fixtures import (write_ade20k, write_cifar10, write_cifar100, write_cityscapes, write_nyuv2,
                       write_stl10, write_voc)


@pytest.fixture
def cifar10_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_cifar10(tmp_path)


@pytest.fixture
def cifar100_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_cifar100(tmp_path)


@pytest.fixture
def stl10_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_stl10(tmp_path)


@pytest.fixture
def voc_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_voc(tmp_path)


@pytest.fixture
def ade20k_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_ade20k(tmp_path)


@pytest.fixture
def cityscapes_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_cityscapes(tmp_path)


@pytest.fixture
def nyuv2_data(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_nyuv2(tmp_path)
