"""PASCAL VOC 2012, ADE20K (SceneParsing) and Cityscapes from their official on-disk layouts.

Splits: "train" and "val" are carved from the official train split, "test" is the official
validation split (the one papers report). Label values outside a data set's known classes raise a
ValueError naming the file instead of being wrapped or silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_robust.data.base import LOADERS, DatasetNotFoundError, Split, pick_split, require_files
from ssl_robust.data.catalog import DATASETS, TaskInfo
from ssl_robust.data.transforms import Sizing, mask_to_tensor, sized_image_to_tensor, target_size
from ssl_robust.config import DataCfg


Pair = tuple[Path, Path]
VocBackground = Literal["include", "exclude"]
MapFactory = Callable[[DataCfg, TaskInfo], "LabelMap"]


# Cityscapes labelIds -> the 19 train ids of the benchmark; every other id is ignored.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                        24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_MAX_ID = 33  # ids 0..33 are defined; 255 holds the license plate's id -1


class LabelMap:
    """Maps raw label values through a 256-entry table; entries of -1 are unknown values (raise)."""

    def __init__(self, table: np.ndarray, dataset: str) -> None:
        self.table, self.dataset = table, dataset

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        mapped = self.table[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0]).tolist()
            raise ValueError(f"data set {self.dataset!r}: {path} holds label value(s) {bad} "
                             f"outside the known classes")
        return mapped


VOC_CLASSES = 21  # 0 background, 1..20 objects


def voc_label_map(ignore_index: int, background: VocBackground = "include") -> LabelMap:
    """VOC: 0 background .. 20 classes kept, 255 (object borders, difficult) ignored. With
    ``background="exclude"`` background is ignored too and 1..20 shift down to 0..19 (a 20-class
    head; the poster's seed code scores no background pixel)."""
    table = np.full(256, -1, dtype=np.int64)
    if background == "exclude":
        table[0] = ignore_index
        table[1:VOC_CLASSES] = np.arange(VOC_CLASSES - 1)
    else:
        table[:VOC_CLASSES] = np.arange(VOC_CLASSES)
    table[255] = ignore_index
    return LabelMap(table, "voc2012")


def ade_label_map(ignore_index: int) -> LabelMap:
    """ADE20K: 0 ("other") ignored, 1..150 shifted down to 0..149 (reduce_zero_label)."""
    table = np.full(256, -1, dtype=np.int64)
    table[0] = ignore_index
    table[1:151] = np.arange(150)
    return LabelMap(table, "ade20k")


def cityscapes_label_map(ignore_index: int) -> LabelMap:
    """Cityscapes: the 19 evaluated labelIds to train ids 0..18, the other defined ids ignored."""
    table = np.full(256, -1, dtype=np.int64)
    table[:CITYSCAPES_MAX_ID + 1] = ignore_index
    table[255] = ignore_index
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return LabelMap(table, "cityscapes")


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel label PNG ('P' palette or 'L' grey) as its raw uint8 values."""
    with Image.open(path) as mask:
        if mask.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a single-channel label PNG (mode 'P' or 'L'), "
                             f"got mode {mask.mode!r}")
        return np.array(mask, dtype=np.uint8)


class PairedSegmentation(Dataset):
    """Items ``(image [3,H,W] in [0,1], mask long [h,w])`` from (image file, label PNG) pairs.

    ``sizing="square"``: H = W = h = w = image_size. ``"short_side"``: the image's short side is
    image_size (aspect ratio kept) and the mask keeps the label file's native resolution.
    """

    def __init__(self, pairs: list[Pair], label_map: LabelMap, image_size: int,
                 sizing: Sizing = "square") -> None:
        self.pairs, self.label_map, self.image_size = pairs, label_map, image_size
        self.sizing = sizing

    def __len__(self) -> int:
        return len(self.pairs)

    def native_size(self, i: int) -> tuple[int, int]:
        """(H, W) of the label file of item ``i``, from its PNG header."""
        with Image.open(self.pairs[i][1]) as mask:
            width, height = mask.size
        return height, width

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[i]
        with Image.open(image_path) as image:
            pixels = sized_image_to_tensor(np.array(image.convert("RGB")), self.image_size, self.sizing)
        labels = self.label_map(read_label_png(mask_path), mask_path)
        return pixels, mask_to_tensor(labels, target_size(self.image_size, self.sizing))


def require_pairs(dataset: str, searched: Path, pairs: list[Pair]) -> list[Pair]:
    """Fail before any work if the split is empty or any listed image or label file is missing."""
    how = DATASETS.get(dataset).how_to_get
    if not pairs:
        raise DatasetNotFoundError(f"data set {dataset!r}: searched {searched}, found no images. {how}")
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"data set {dataset!r}: searched {searched}, {len(missing)} expected "
                                   f"file(s) missing, e.g. {missing[:3]}. {how}")
    return pairs


def voc_base(root: Path) -> Path:
    """``VOCdevkit/VOC2012`` under ``root``; ``root`` may also be VOCdevkit or VOC2012 itself."""
    for base in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (base / "ImageSets" / "Segmentation").is_dir():
            return base
    return root / "VOCdevkit" / "VOC2012"


def voc_pairs(cfg_root: Path | None, official: str) -> list[Pair]:
    """(JPEG, class PNG) pairs listed in ``ImageSets/Segmentation/<official>.txt``."""
    root = Path(cfg_root).expanduser() if cfg_root is not None else None
    rel = voc_base(root).relative_to(root) if root is not None else Path("VOCdevkit/VOC2012")
    expected = [str(rel / p) for p in ("JPEGImages", "SegmentationClass",
                                       f"ImageSets/Segmentation/{official}.txt")]
    base = require_files("voc2012", root, expected) / rel
    names = (base / "ImageSets" / "Segmentation" / f"{official}.txt").read_text().split()
    pairs = [(base / "JPEGImages" / f"{n}.jpg", base / "SegmentationClass" / f"{n}.png") for n in names]
    return require_pairs("voc2012", base, pairs)


def ade_pairs(cfg_root: Path | None, official: str) -> list[Pair]:
    """(JPEG, annotation PNG) pairs of ``ADEChallengeData2016/*/<official>``, matched by file stem."""
    folders = [f"ADEChallengeData2016/images/{official}", f"ADEChallengeData2016/annotations/{official}"]
    root = require_files("ade20k", cfg_root, folders)
    images, annotations = root / folders[0], root / folders[1]
    pairs = [(p, annotations / f"{p.stem}.png") for p in sorted(images.glob("*.jpg"))]
    return require_pairs("ade20k", images, pairs)


def cityscapes_pairs(cfg_root: Path | None, official: str) -> list[Pair]:
    """(leftImg8bit PNG, gtFine labelIds PNG) pairs of every city in ``official``."""
    folders = [f"leftImg8bit/{official}", f"gtFine/{official}"]
    root = require_files("cityscapes", cfg_root, folders)
    suffix = "_leftImg8bit.png"
    images = sorted((root / folders[0]).glob(f"*/*{suffix}"))
    pairs = [(p, root / folders[1] / p.parent.name / (p.name[:-len(suffix)] + "_gtFine_labelIds.png"))
             for p in images]
    return require_pairs("cityscapes", root / folders[0], pairs)


def _builder(find_pairs: Callable[[Path | None, str], list[Pair]], make_map: MapFactory,
             official: tuple[str, str]):
    """A ``DatasetSpec.build``: train/val carved from ``official[0]``, test = ``official[1]``."""

    def build(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
              sizing: Sizing = "square") -> Dataset:
        pairs = find_pairs(cfg.root, official[1] if split == "test" else official[0])
        chosen = [pairs[i] for i in pick_split(len(pairs), split, cfg.val_fraction)]
        return PairedSegmentation(chosen, make_map(cfg, info), image_size, sizing)

    return build


def _voc_map(cfg: DataCfg, info: TaskInfo) -> LabelMap:
    return voc_label_map(info.ignore_index, cfg.voc_background)


def _ade_map(cfg: DataCfg, info: TaskInfo) -> LabelMap:
    return ade_label_map(info.ignore_index)


def _cityscapes_map(cfg: DataCfg, info: TaskInfo) -> LabelMap:
    return cityscapes_label_map(info.ignore_index)


LOADERS.register("voc2012")(_builder(voc_pairs, _voc_map, ("train", "val")))
LOADERS.register("ade20k")(_builder(ade_pairs, _ade_map, ("training", "validation")))
LOADERS.register("cityscapes")(_builder(cityscapes_pairs, _cityscapes_map, ("train", "val")))
