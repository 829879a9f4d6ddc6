"""ImageNet (ILSVRC-2012) in the layout ``torchvision.datasets.ImageNet`` reads, with its class
indices (ImageFolder's sorted wnid folders), but without torchvision's devkit MD5 check and the
``meta.bin`` it writes into the root, so a read-only root and a small fixture load too.
"""
from __future__ import annotations

import functools
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_robust.config import DataCfg
from ssl_robust.data.base import LOADERS, DatasetNotFoundError, Split, pick_split, require_files
from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.data.classification import check_labels
from ssl_robust.data.safe_pickle import DataFileError
from ssl_robust.data.transforms import Sizing, image_to_tensor

IMAGENET_DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
IMAGENET_META = "ILSVRC2012_devkit_t12/data/meta.mat"
IMAGENET_VAL_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
IMAGENET_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)
WNID = re.compile(r"^n\d{8}$")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class ImageFiles:
    """Image files and their classes as compact arrays (no per-file Python objects, so loader
    workers forked from the main process share them instead of copying 1.28M paths each)."""

    folders: tuple[Path, ...]
    folder: np.ndarray  # [N] index into ``folders``
    names: np.ndarray  # [N] file names (bytes)
    labels: np.ndarray  # [N] int64 class indices

    def __len__(self) -> int:
        return len(self.names)

    def path(self, k: int) -> Path:
        return self.folders[int(self.folder[k])] / self.names[k].decode()


class FileClassification(Dataset):
    """Items ``(image [3,S,S] in [0,1], class)`` read from image files, limited to ``indices``."""

    def __init__(self, files: ImageFiles, indices: list[int], image_size: int) -> None:
        self.files, self.indices = files, np.asarray(indices, dtype=np.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.indices)

    def native_size(self, i: int) -> tuple[int, int]:
        with Image.open(self.files.path(int(self.indices[i]))) as image:
            width, height = image.size
        return height, width

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        k = int(self.indices[i])
        with Image.open(self.files.path(k)) as image:
            return image_to_tensor(image, self.image_size), int(self.files.labels[k])


def _image_names(folder: Path) -> list[str]:
    """The image files directly in ``folder``, sorted (one directory read, no stat per file)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())


def imagenet_classes(folder: Path) -> list[str]:
    """The WordNet-id folders of an ImageNet split folder, sorted: class k is the k-th, as in
    torchvision's ImageFolder (with all 1000 folders, the standard ImageNet-1k indices)."""
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_dir())
    bad = [name for name in names if not WNID.match(name)]
    if bad:
        raise DataFileError(f"data set 'imagenet': {folder} holds folder(s) {bad[:3]} that are not "
                            f"WordNet ids like n01440764; expected {folder.name}/<wnid>/*.JPEG")
    return names


def _files(folders: list[Path], names: list[list[str]], labels: list[int]) -> ImageFiles:
    """Pack per-folder file lists (all files of folder j have class ``labels[j]``) into ImageFiles."""
    counts = [len(n) for n in names]
    return ImageFiles(tuple(folders), np.repeat(np.arange(len(folders), dtype=np.int32), counts),
                      np.array([n.encode() for group in names for n in group], dtype=np.bytes_),
                      np.repeat(np.asarray(labels, dtype=np.int64), counts))


def _scan_wnid_folders(folder: Path, classes: list[str]) -> ImageFiles:
    """Every image of ``folder/<wnid>/``; DataFileError names a class folder without images or a
    wnid that is not one of the train split's ``classes``."""
    index = {wnid: k for k, wnid in enumerate(classes)}
    wnids = imagenet_classes(folder)
    unknown = [wnid for wnid in wnids if wnid not in index]
    if unknown:
        raise DataFileError(f"data set 'imagenet': {folder} has class folder(s) {unknown[:3]} "
                            f"that train/ lacks")
    names = [_image_names(folder / wnid) for wnid in wnids]
    empty = [wnid for wnid, group in zip(wnids, names) if not group]
    if empty:
        raise DataFileError(f"data set 'imagenet': {folder} has class folder(s) {empty[:3]} without "
                            f"images ({', '.join(IMAGE_SUFFIXES)})")
    return _files([folder / wnid for wnid in wnids], names, [index[wnid] for wnid in wnids])


def _tar_member(tar: tarfile.TarFile, member: str, archive: Path) -> bytes:
    try:
        extracted = tar.extractfile(member)
    except KeyError:
        extracted = None
    if extracted is None:
        raise DataFileError(f"{archive}: no {member}")
    return extracted.read()


def read_devkit(archive: Path) -> tuple[dict[int, str], list[int]]:
    """ILSVRC2012_ID -> wnid of the devkit's leaf synsets (``meta.mat``) and the validation ground
    truth (one ILSVRC2012_ID per image, in file-number order), as torchvision's ``parse_devkit_archive``."""
    import scipy.io

    try:
        with tarfile.open(archive) as tar:
            meta_bytes = _tar_member(tar, IMAGENET_META, archive)
            truth = _tar_member(tar, IMAGENET_VAL_TRUTH, archive).split()
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        leaves = np.asarray(synsets["num_children"], dtype=np.int64) == 0
        ids = np.asarray(synsets["ILSVRC2012_ID"], dtype=np.int64)[leaves]
        wnids = [str(w) for w in np.asarray(synsets["WNID"])[leaves]]
        return dict(zip(ids.tolist(), wnids)), [int(t) for t in truth]
    except (tarfile.TarError, OSError, KeyError, ValueError, TypeError) as err:
        raise DataFileError(f"{archive}: not an ILSVRC-2012 devkit archive ({err!r})") from err


def _val_label(name: str, wnid_of: dict[int, str], truth: list[int], index: dict[str, int], where: Path) -> int:
    """The class of one flat validation file, from its number in the devkit's ground truth."""
    match = IMAGENET_VAL_NAME.match(name)
    number = int(match.group(1)) if match else 0
    if not 1 <= number <= len(truth):
        raise DataFileError(f"data set 'imagenet': {where / name} is not ILSVRC2012_val_<n>.JPEG with n in "
                            f"1..{len(truth)} (the devkit's ground truth)")
    wnid = wnid_of.get(truth[number - 1])
    if wnid not in index:
        raise DataFileError(f"data set 'imagenet': {where / name} has class {wnid or truth[number - 1]} "
                            f"that train/ lacks")
    return index[wnid]


def _scan_flat_val(root: Path, classes: list[str]) -> ImageFiles:
    """The validation images as extracted from ILSVRC2012_img_val.tar (all in val/), labelled from
    the devkit archive next to it."""
    folder, archive = root / "val", root / IMAGENET_DEVKIT
    if not archive.is_file():
        raise DatasetNotFoundError(
            f"data set 'imagenet': {folder} holds no <wnid>/ folders, so its images need labels from "
            f"{archive}, which is missing. {DATASETS.get('imagenet').how_to_get}")
    wnid_of, truth = read_devkit(archive)
    index = {wnid: k for k, wnid in enumerate(classes)}
    names = _image_names(folder)
    labels = [_val_label(name, wnid_of, truth, index, folder) for name in names]
    return ImageFiles((folder,), np.zeros(len(names), dtype=np.int32),
                      np.array([n.encode() for n in names], dtype=np.bytes_), np.asarray(labels, dtype=np.int64))


@functools.lru_cache(maxsize=8)
def _imagenet_files(root: Path, part: str, mtime_ns: int) -> ImageFiles:
    """The images of train/ or val/ (scanned once per process and folder state: 1.28M files)."""
    classes = imagenet_classes(root / "train")
    folder = root / part
    if part == "val" and not imagenet_classes(folder):
        return _scan_flat_val(root, classes)
    return _scan_wnid_folders(folder, classes)


def build_imagenet(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                   sizing: Sizing = "square") -> Dataset:
    """ImageNet: train/val carved from ``train/<wnid>/``, test = the official validation images
    (``val/<wnid>/`` or ``val/`` flat with the devkit). Always square, like every classification set."""
    part = "val" if split == "test" else "train"
    root = require_files("imagenet", cfg.root, ["train"] if part == "train" else ["train", "val"])
    files = _imagenet_files(root, part, (root / part).stat().st_mtime_ns)
    if not len(files):
        raise DatasetNotFoundError(f"data set 'imagenet': searched {root / part}, found no images. "
                                   f"{DATASETS.get('imagenet').how_to_get}")
    check_labels(files.labels, info.num_classes, f"data set 'imagenet' ({root / part})")
    return FileClassification(files, pick_split(len(files), split, cfg.val_fraction), image_size)


LOADERS.register("imagenet")(build_imagenet)
