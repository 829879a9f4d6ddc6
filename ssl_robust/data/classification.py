"""CIFAR-10, CIFAR-100 and STL-10 from torchvision's on-disk layouts (ImageNet: ``imagenet``).

These loaders check structure (files exist, pickles/binaries parse, shapes and labels are right),
so re-packed copies and small test fixtures in the official format load too. CIFAR's pickles are
read as data only (``safe_pickle``: a tampered file cannot run code), and a file of the size of the
released one must also carry the released MD5 (torchvision's published sums).
"""
from __future__ import annotations

import functools
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_robust.data import safe_pickle
from ssl_robust.data.base import LOADERS, Split, pick_split, require_files
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.safe_pickle import DataFileError
from ssl_robust.data.transforms import Sizing, image_to_tensor
from ssl_robust.config import DataCfg


CIFAR_LAYOUTS = {  # name: (torchvision class, folder, files)
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"]),
}
# Sizes in bytes of the released cifar-10-batches-py files; CIFAR-100's are not recorded, so its
# train/test files count as released ones when they hold at least the release's pixel bytes.
CIFAR_RELEASE_SIZES = {"data_batch_1": 31035704, "data_batch_2": 31035320, "data_batch_3": 31035999,
                       "data_batch_4": 31035696, "data_batch_5": 31035623, "test_batch": 31035526,
                       "batches.meta": 158}
CIFAR100_RELEASE_PIXELS = {"train": 50000 * 3072, "test": 10000 * 3072}
STL10_FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
STL10_IMAGE_BYTES = 3 * 96 * 96


def check_labels(labels: np.ndarray, num_classes: int, where: str, first: int = 0) -> None:
    """Raise a DataFileError naming the first label outside ``first..first+num_classes-1``."""
    bad = np.flatnonzero((labels < first) | (labels >= first + num_classes))
    if bad.size:
        raise DataFileError(f"{where}: label {int(labels[bad[0]])} at index {int(bad[0])} "
                         f"is outside {first}..{first + num_classes - 1}")


class ArrayClassification(Dataset):
    """Items ``(image [3,S,S] in [0,1], class)`` from [N,H,W,3] uint8 images, limited to ``indices``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: list[int],
                 image_size: int) -> None:
        self.images, self.labels = images, labels
        self.indices, self.image_size = indices, image_size

    def __len__(self) -> int:
        return len(self.indices)

    def native_size(self, i: int) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        k = self.indices[i]
        return image_to_tensor(self.images[k], self.image_size), int(self.labels[k])


class _CifarStructure:
    """torchvision's CIFAR class for its ``download()`` only: files present = nothing to fetch."""

    base_folder: str
    train_list: list
    test_list: list
    meta: dict
    root: str

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(folder, name)) for name in names)


def is_release_size(name: str, size: int) -> bool:
    """Whether a CIFAR file called ``name`` is as large as the released file of that name."""
    if name in CIFAR_RELEASE_SIZES:
        return size == CIFAR_RELEASE_SIZES[name]
    return name in CIFAR100_RELEASE_PIXELS and size >= CIFAR100_RELEASE_PIXELS[name]


@functools.lru_cache(maxsize=64)
def _md5(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_release_md5(path: Path, expected: str, archive: str) -> None:
    """Raise a DataFileError naming ``path`` when a release-size file has another MD5 than ``expected``."""
    stat = path.stat()
    if not is_release_size(path.name, stat.st_size):
        return
    got = _md5(str(path), stat.st_size, stat.st_mtime_ns)
    if got != expected:
        raise DataFileError(f"{path}: MD5 {got} differs from the released file's {expected} (same size as "
                            f"the release, other content: corrupt or tampered); re-extract it from {archive}")


def read_cifar_file(path: Path, expected_md5: str, archive: str) -> dict[str, Any]:
    """One CIFAR pickle as a dict, read as data only; DataFileError names the file otherwise."""
    check_release_md5(path, expected_md5, archive)
    try:
        entry = safe_pickle.load_path(path)
    except safe_pickle.ForbiddenGlobalError as err:
        raise DataFileError(f"{path}: {err}") from err
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            MemoryError) as err:
        raise DataFileError(f"{path}: does not parse as a pickle ({err!r})") from err
    if not isinstance(entry, dict):
        raise DataFileError(f"{path}: holds {type(entry).__name__}, expected a dict")
    return entry


def read_cifar(name: str, root: Path, train: bool) -> tuple[np.ndarray, list[int]]:
    """Images [N, 32, 32, 3] uint8 and labels of the train or test files, plus a meta-file check."""
    cls = structural_class(name)
    folder, archive = root / cls.base_folder, cls.filename
    images, labels = [], []
    for file_name, md5 in (cls.train_list if train else cls.test_list):
        entry = read_cifar_file(folder / file_name, md5, archive)
        key = "labels" if "labels" in entry else "fine_labels"
        if "data" not in entry or key not in entry:
            raise DataFileError(f"{folder / file_name}: missing 'data' or '{key}' (found {sorted(entry)})")
        data = np.asarray(entry["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataFileError(f"{folder / file_name}: 'data' is {data.dtype} {data.shape}, "
                                "expected uint8 [N, 3072]")
        images.append(data)
        labels.extend(entry[key])
    meta_path = folder / cls.meta["filename"]
    if cls.meta["key"] not in read_cifar_file(meta_path, cls.meta["md5"], archive):
        raise DataFileError(f"{meta_path}: missing {cls.meta['key']!r}")
    return np.vstack(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def download_cifar(name: str, root: Path) -> None:
    """torchvision's download of the archive into ``root``, unless every file is already there."""
    cls = structural_class(name)
    dataset = cls.__new__(cls)
    dataset.root = str(root)
    dataset.download()


def stl10_problems(folder: Path) -> list[str]:
    """What keeps ``folder`` from being an STL-10 binary folder (sizes only; empty = fine)."""
    problems = []
    for part in ("train", "test"):
        images, labels = folder / f"{part}_X.bin", folder / f"{part}_y.bin"
        if not (images.is_file() and labels.is_file()):
            problems.append(f"missing {images.name} or {labels.name}")
            continue
        n_bytes, n_labels = images.stat().st_size, labels.stat().st_size
        if n_bytes % STL10_IMAGE_BYTES or n_bytes // STL10_IMAGE_BYTES != n_labels:
            problems.append(f"{images.name} holds {n_bytes} bytes, "
                            f"expected {n_labels} images x {STL10_IMAGE_BYTES}")
    return problems


class _STL10Structure:
    """Replaces torchvision's MD5 checks of STL-10 with size checks (no unlabelled split needed)."""

    base_folder: str
    root: str

    def _check_integrity(self) -> bool:
        return not stl10_problems(Path(self.root) / self.base_folder)


@functools.cache
def structural_class(name: str) -> type:
    """torchvision's class for ``name`` with the MD5 check replaced by a structural one.

    Made on first use, because importing torchvision takes seconds.
    """
    from torchvision import datasets

    if name == "stl10":
        return type("StructuralSTL10", (_STL10Structure, datasets.STL10), {})
    base = CIFAR_LAYOUTS[name][0]
    return type(f"Structural{base}", (_CifarStructure, getattr(datasets, base)), {})


def _torchvision_root(cfg: DataCfg, name: str, folder: str, files: list[str]) -> Path:
    """The root to hand torchvision; without ``data.download`` every file must be there."""
    if cfg.root is not None and cfg.download:
        return Path(cfg.root).expanduser()
    return require_files(name, cfg.root, [f"{folder}/{f}" for f in files])


def _open(factory: Callable[[], Dataset], where: str) -> Dataset:
    """Run a torchvision constructor, turning parse failures into a DataFileError naming the folder."""
    try:
        return factory()
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as err:
        raise DataFileError(f"{where}: files do not parse in the official format ({err!r})") from err


def _build_cifar(name: str) -> Callable[..., Dataset]:
    """A ``DatasetSpec.build`` for CIFAR: train/val from the train batches, test = the test batch."""
    _, folder, files = CIFAR_LAYOUTS[name]

    def build(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
              sizing: Sizing = "square") -> Dataset:  # classification is always square
        root = _torchvision_root(cfg, name, folder, files)
        where = f"data set {name!r} ({root / folder})"
        if cfg.download:
            download_cifar(name, root)
        images, raw_labels = read_cifar(name, root, train=split != "test")
        try:
            labels = np.asarray(raw_labels, dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise DataFileError(f"{where}: labels are not integers ({err})") from err
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataFileError(f"{where}: {labels.size} labels for {len(images)} images")
        part = "test" if split == "test" else "train"
        check_labels(labels, info.num_classes, f"{where}, {part} batches")
        indices = pick_split(len(labels), split, cfg.val_fraction)
        return ArrayClassification(images, labels, indices, image_size)

    return build


def build_stl10(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                sizing: Sizing = "square") -> Dataset:
    """STL-10: the 5000 labelled train images give train/val, the 8000 test images give test.

    Classification is always square: ``sizing`` is ignored."""
    root = _torchvision_root(cfg, "stl10", "stl10_binary", STL10_FILES)
    where = f"data set 'stl10' ({root / 'stl10_binary'})"
    problems = stl10_problems(root / "stl10_binary")
    if problems and not cfg.download:
        raise DataFileError(f"{where}: {'; '.join(problems)}")
    part = "test" if split == "test" else "train"
    cls = structural_class("stl10")
    raw = _open(lambda: cls(str(root), split=part, download=cfg.download), where)
    file_labels = (raw.labels.astype(np.int64) + 1) % 256  # undo torchvision's uint8 "- 1"
    check_labels(file_labels, info.num_classes, f"{where}, {part}_y.bin (1-based labels)", first=1)
    labels = file_labels - 1
    images = raw.data.transpose(0, 2, 3, 1)  # [N,3,H,W] -> [N,H,W,3] view
    indices = pick_split(len(labels), split, cfg.val_fraction)
    return ArrayClassification(images, labels, indices, image_size)


LOADERS.register("cifar10")(_build_cifar("cifar10"))
LOADERS.register("cifar100")(_build_cifar("cifar100"))
LOADERS.register("stl10")(build_stl10)
