"""CIFAR-10/100 and STL-10 loaded from official-format fixtures through the registry."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ssl_robust.config import DataCfg
from ssl_robust.data import DATASETS
from ssl_robust.data.base import LOADERS, DatasetNotFoundError
from ssl_robust.data.load import load_split

from .fixtures import write_cifar10, write_cifar100, write_stl10

CASES = [  # name, writer, folder, num_classes, train size, test size
    ("cifar10", write_cifar10, "cifar-10-batches-py", 10, 10, 4),
    ("cifar100", write_cifar100, "cifar-100-python", 100, 8, 4),
    ("stl10", write_stl10, "stl10_binary", 10, 8, 4),
]


@pytest.mark.parametrize("name,writer,folder,num_classes,n_train,n_test", CASES)
def test_splits_shapes_and_labels(tmp_path, name, writer, folder, num_classes, n_train, n_test):
    written = writer(tmp_path)
    cfg = DataCfg(name=name, root=tmp_path)
    train, info = load_split(cfg, "train", image_size=28)
    val, _ = load_split(cfg, "val", image_size=28)
    test, _ = load_split(cfg, "test", image_size=28)
    assert info.task == "classification" and info.num_classes == num_classes
    assert (len(train) + len(val), len(val), len(test)) == (n_train, 1, n_test)
    for dataset in (train, val, test):
        image, label = dataset[0]
        assert image.shape == (3, 28, 28) and image.dtype == torch.float32
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert isinstance(label, int) and 0 <= label < num_classes
    assert [label for _, label in test] == written["test"]["labels"]


def test_cifar_pixels_keep_official_layout(cifar10_data):
    root, _ = cifar10_data
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")["data"][1]  # red plane, green plane, blue plane
    test, _ = load_split(DataCfg(name="cifar10", root=root), "test", image_size=32)
    expected = torch.from_numpy(raw.reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(test[1][0], expected)


@pytest.mark.parametrize("name,writer,folder,num_classes,n_train,n_test", CASES)
def test_pixels_match_written_images(tmp_path, name, writer, folder, num_classes, n_train, n_test):
    written = writer(tmp_path)
    size = written["test"]["images"].shape[1]
    test, _ = load_split(DataCfg(name=name, root=tmp_path), "test", image_size=size)
    for (image, _), expected in zip(test, written["test"]["images"], strict=True):
        assert torch.allclose(image, torch.from_numpy(expected / 255.0).float().permute(2, 0, 1))


def test_train_and_val_are_disjoint_and_deterministic(cifar100_data):
    root, _ = cifar100_data
    cfg = DataCfg(name="cifar100", root=root, val_fraction=0.25)
    build, info = LOADERS.get("cifar100"), DATASETS.get("cifar100").infos["classification"]
    train, val = build(cfg, "train", info, 28), build(cfg, "val", info, 28)
    assert set(train.indices).isdisjoint(val.indices) and len(train.indices) + len(val.indices) == 8
    assert build(cfg, "val", info, 28).indices == val.indices


@pytest.mark.parametrize("name,writer,bad,match", [
    ("cifar10", write_cifar10, 10, r"label 10 at index 0 is outside 0\.\.9"),
    ("cifar100", write_cifar100, 100, r"label 100 at index 0 is outside 0\.\.99"),
    ("stl10", write_stl10, 0, r"train_y\.bin.*label 0 at index 0 is outside 1\.\.10"),
    ("stl10", write_stl10, 11, r"label 11 at index 0 is outside 1\.\.10"),
])
def test_out_of_range_label_raises(tmp_path, name, writer, bad, match):
    writer(tmp_path, bad_label=bad)
    with pytest.raises(ValueError, match=match):
        load_split(DataCfg(name=name, root=tmp_path), "train", image_size=28)


@pytest.mark.parametrize("name,writer,folder,num_classes,n_train,n_test", CASES)
def test_missing_root_and_file(tmp_path, name, writer, folder, num_classes, n_train, n_test):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(DataCfg(name=name, root=missing), "test", image_size=28)
    message = str(err.value)
    assert name in message and str(missing) in message and folder in message
    assert "data.download=true" in message
    writer(tmp_path)
    victim = sorted((tmp_path / folder).iterdir())[-1]
    victim.unlink()
    with pytest.raises(DatasetNotFoundError, match=victim.name):
        load_split(DataCfg(name=name, root=tmp_path), "train", image_size=28)


def test_no_root_without_download(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="needs data.root"):
        load_split(DataCfg(name="cifar10"), "test", image_size=28)


def test_corrupt_pickle_is_a_value_error(cifar10_data):
    root, _ = cifar10_data
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        load_split(DataCfg(name="cifar10", root=root), "test", image_size=28)


def test_truncated_stl_binary_is_a_value_error(stl10_data):
    root, _ = stl10_data
    path = root / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="test_X.bin"):
        load_split(DataCfg(name="stl10", root=root), "test", image_size=28)


@pytest.mark.parametrize("name,writer,folder,num_classes,n_train,n_test", CASES)
def test_download_flag_keeps_files_already_there(tmp_path, name, writer, folder, num_classes,
                                                 n_train, n_test):
    writer(tmp_path)  # not the released files: an MD5 check would re-download (no network here)
    test, _ = load_split(DataCfg(name=name, root=tmp_path, download=True), "test", image_size=28)
    assert len(test) == n_test
