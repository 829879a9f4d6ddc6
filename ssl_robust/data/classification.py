"""CIFAR-10, CIFAR-100 and STL-10 from torchvision's on-disk layouts.

torchvision checks the MD5 of the released files; these loaders check structure instead (files
exist, pickles/binaries parse, shapes and labels are right), so re-packed copies and small test
fixtures in the official format load too.
"""
from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_robust.data.base import LOADERS, Split, pick_split, require_files
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.transforms import Sizing, image_to_tensor
from ssl_robust.config import DataCfg


CIFAR_LAYOUTS = {  # name: (torchvision class, folder, files)
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"]),
}
STL10_FILES = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
STL10_IMAGE_BYTES = 3 * 96 * 96


def check_labels(labels: np.ndarray, num_classes: int, where: str, first: int = 0) -> None:
    """Raise a ValueError naming the first label outside ``first..first+num_classes-1``."""
    bad = np.flatnonzero((labels < first) | (labels >= first + num_classes))
    if bad.size:
        raise ValueError(f"{where}: label {int(labels[bad[0]])} at index {int(bad[0])} "
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
    """Replaces torchvision's MD5 checks of CIFAR files with existence checks; parsing validates."""

    base_folder: str
    train_list: list
    test_list: list
    meta: dict
    root: str

    def _check_integrity(self) -> bool:
        folder = os.path.join(self.root, self.base_folder)
        names = [name for name, _ in self.train_list + self.test_list] + [self.meta["filename"]]
        return all(os.path.isfile(os.path.join(folder, name)) for name in names)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        with open(path, "rb") as infile:
            self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


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
    """Run a torchvision constructor, turning parse failures into a ValueError naming the folder."""
    try:
        return factory()
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{where}: files do not parse in the official format ({err!r})") from err


def _build_cifar(name: str) -> Callable[..., Dataset]:
    """A ``DatasetSpec.build`` for CIFAR: train/val from the train batches, test = the test batch."""
    _, folder, files = CIFAR_LAYOUTS[name]

    def build(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
              sizing: Sizing = "square") -> Dataset:  # classification is always square
        root = _torchvision_root(cfg, name, folder, files)
        where = f"data set {name!r} ({root / folder})"
        cls = structural_class(name)
        raw = _open(lambda: cls(str(root), train=split != "test", download=cfg.download), where)
        labels = np.asarray(raw.targets, dtype=np.int64)
        if len(labels) != len(raw.data):
            raise ValueError(f"{where}: {len(labels)} labels for {len(raw.data)} images")
        part = "test" if split == "test" else "train"
        check_labels(labels, info.num_classes, f"{where}, {part} batches")
        indices = pick_split(len(labels), split, cfg.val_fraction)
        return ArrayClassification(raw.data, labels, indices, image_size)

    return build


def build_stl10(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                sizing: Sizing = "square") -> Dataset:
    """STL-10: the 5000 labelled train images give train/val, the 8000 test images give test.

    Classification is always square: ``sizing`` is ignored."""
    root = _torchvision_root(cfg, "stl10", "stl10_binary", STL10_FILES)
    where = f"data set 'stl10' ({root / 'stl10_binary'})"
    problems = stl10_problems(root / "stl10_binary")
    if problems and not cfg.download:
        raise ValueError(f"{where}: {'; '.join(problems)}")
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
