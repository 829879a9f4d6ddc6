"""CIFAR-10, CIFAR-100, STL-10 and ImageNet (ILSVRC-2012) from torchvision's on-disk layouts.

These loaders check structure (files exist, pickles/binaries parse, shapes and labels are right),
so re-packed copies and small test fixtures in the official format load too. CIFAR's pickles are
read as data only (``safe_pickle``: a tampered file cannot run code), and a file of the size of the
released one must also carry the released MD5 (torchvision's published sums). ImageNet is read in
the layout ``torchvision.datasets.ImageNet`` reads, with its class indices (ImageFolder's sorted
wnid folders), but without torchvision's devkit MD5 check and the ``meta.bin`` it writes into the
root, so a read-only root and a small fixture load too.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import pickle
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_robust.data import safe_pickle
from ssl_robust.data.base import LOADERS, DatasetNotFoundError, Split, pick_split, require_files
from ssl_robust.data.catalog import DATASETS, TaskInfo
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
IMAGENET_DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
IMAGENET_META = "ILSVRC2012_devkit_t12/data/meta.mat"
IMAGENET_VAL_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
IMAGENET_VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$", re.IGNORECASE)
WNID = re.compile(r"^n\d{8}$")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


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
LOADERS.register("cifar10")(_build_cifar("cifar10"))
LOADERS.register("cifar100")(_build_cifar("cifar100"))
LOADERS.register("stl10")(build_stl10)
