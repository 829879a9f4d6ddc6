"""CIFAR-10/100 and STL-10 (``ssl_robust.data.classification``) loaded from official-format
fixtures through the registry."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_robust.config import DataCfg
from ssl_robust.data import DATASETS, safe_pickle
from ssl_robust.data.base import LOADERS, DatasetNotFoundError
from ssl_robust.data.classification import CIFAR_RELEASE_SIZES, is_release_size
from ssl_robust.data.load import load_split
from ssl_robust.data.safe_pickle import DataFileError

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


class _OpenFile:
    """Unpickling it would create ``marker`` (``open(marker, "w")``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


class _System:
    """Unpickling it would run ``touch marker`` through the shell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _craft(path: Path, payload: object, pad_to: int | None = None) -> None:
    blob = pickle.dumps({"data": payload, "labels": [0]}, protocol=2)
    path.write_bytes(blob + b"\0" * ((pad_to or 0) - len(blob)))


@pytest.mark.parametrize("name,writer,folder,victim,split", [
    ("cifar10", write_cifar10, "cifar-10-batches-py", "data_batch_1", "train"),
    ("cifar10", write_cifar10, "cifar-10-batches-py", "test_batch", "test"),
    ("cifar10", write_cifar10, "cifar-10-batches-py", "batches.meta", "test"),
    ("cifar100", write_cifar100, "cifar-100-python", "train", "train"),
    ("cifar100", write_cifar100, "cifar-100-python", "meta", "test"),
])
@pytest.mark.parametrize("gadget", [_OpenFile, _System])
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, name, writer, folder, victim, split, gadget):
    writer(tmp_path)
    marker = tmp_path / "marker"
    _craft(tmp_path / folder / victim, gadget(marker))
    with pytest.raises(DataFileError, match=rf"{victim}: global \S+ is not allowed in a data file"):
        load_split(DataCfg(name=name, root=tmp_path), split, image_size=28)
    assert not marker.exists()


def test_release_size_file_with_other_md5_is_refused_before_parsing(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "marker"
    victim = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    _craft(victim, _OpenFile(marker), pad_to=CIFAR_RELEASE_SIZES["data_batch_1"])
    with pytest.raises(DataFileError, match=r"data_batch_1: MD5 [0-9a-f]{32} differs from the released"):
        load_split(DataCfg(name="cifar10", root=tmp_path), "train", image_size=28)
    assert not marker.exists()


def test_release_size_rule():
    assert is_release_size("data_batch_1", 31035704) and not is_release_size("data_batch_1", 31035705)
    assert is_release_size("train", 50000 * 3072 + 10) and not is_release_size("train", 4000)
    assert not is_release_size("meta", 1500)  # CIFAR-100's meta size is not recorded: never checked


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_reads_arrays_and_containers(protocol):
    data = {"data": np.arange(12, dtype=np.uint8).reshape(2, 6), "labels": [1, 2], "n": np.int64(3),
            "raw": b"\x00\xff", "names": ("a", "b"), "tags": {1}, "frozen": frozenset({2}), "x": 1.5}
    got = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    assert np.array_equal(got.pop("data"), data.pop("data")) and got == data


def test_restricted_unpickler_allows_only_latin1_bytes():
    class Rot13:
        def __reduce__(self):
            import codecs
            return codecs.encode, ("payload", "rot13")

    with pytest.raises(pickle.UnpicklingError, match="rot13"):
        safe_pickle.loads(pickle.dumps(Rot13(), protocol=2))
