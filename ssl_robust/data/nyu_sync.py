"""NYU Depth v2 raw training frames in the BTS "sync" layout (``data.nyu_train: sync``).

The layout of BTS's ``sync.zip`` (github.com/cleinc/bts, pytorch/README.md), also used by the
Monocular-Depth-Estimation-Toolbox that DINOv2's depth evaluation builds on::

    <root>/sync/<scene>/rgb_XXXXX.jpg          RGB frame (480 x 640)
    <root>/sync/<scene>/sync_depth_XXXXX.png   16-bit PNG, depth in millimetres, 0 = invalid

Which frames: the file list ``<root>/nyudepthv2_train_files_with_gt.txt`` (BTS's
``train_test_inputs/``) or ``<root>/nyu_train.txt`` (the Toolbox's ``splits/``), whose lines are
``/<scene>/rgb_XXXXX.jpg /<scene>/sync_depth_XXXXX.png 518.8579`` (paths relative to ``sync/``;
the focal length is ignored; a depth of ``None`` skips the line). Without a file list, every
``sync/*/rgb_*.jpg`` with its ``sync_depth_*.png`` beside it, in sorted order.

These frames only train the head (train/val carved with ``pick_split``); the test split is always
the labelled .mat's 654 test images (``data/depth.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ssl_robust.config import DataCfg
from ssl_robust.data.base import DatasetNotFoundError, Split, pick_split, require_files
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.transforms import Sizing, depth_to_tensor, sized_image_to_tensor, target_size


SYNC_DIR = "sync"
FILE_LISTS = ("nyudepthv2_train_files_with_gt.txt", "nyu_train.txt")  # BTS, then the Toolbox
DEPTH_SCALE = 1000.0  # PNG units per metre (millimetres)
_SETTING = "data.nyu_train='sync'"

Frame = tuple[Path, Path]  # (rgb jpg, depth png)


def _not_found(message: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(f"{_SETTING}: {message}")


def find_file_list(root: Path) -> Path | None:
    """The first of ``FILE_LISTS`` present in ``root``, or None."""
    return next((root / name for name in FILE_LISTS if (root / name).is_file()), None)


def read_file_list(path: Path, sync: Path) -> list[Frame]:
    """``(rgb, depth)`` paths of a BTS-style file list, in its order; lines without depth skipped."""
    frames = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ValueError(f"{path}:{number}: expected '<rgb> <depth> [focal]', got {line!r}")
        rgb, depth = fields[0], fields[1]
        if depth == "None":
            continue
        frames.append((sync / rgb.lstrip("/\\"), sync / depth.lstrip("/\\")))
    return frames


def glob_frames(sync: Path) -> list[Frame]:
    """Every ``<scene>/rgb_XXXXX.jpg`` with a ``sync_depth_XXXXX.png`` beside it, sorted."""
    frames = []
    for rgb in sorted(sync.glob("*/rgb_*.jpg")):
        depth = rgb.with_name("sync_depth_" + rgb.name[len("rgb_"):-len(".jpg")] + ".png")
        if depth.is_file():
            frames.append((rgb, depth))
    return frames


def sync_frames(root: Path | None) -> list[Frame]:
    """All training frames of the sync layout under ``root``, every file checked to exist."""
    try:
        root = require_files("nyuv2", root, [SYNC_DIR])
    except DatasetNotFoundError as err:
        raise _not_found(str(err)) from err
    sync = root / SYNC_DIR
    file_list = find_file_list(root)
    if file_list is not None:
        frames = read_file_list(file_list, sync)
        missing = [str(p) for frame in frames for p in frame if not p.is_file()]
        if missing:
            raise _not_found(f"{len(missing)} file(s) named in {file_list} are missing under {sync}, "
                             f"e.g. {missing[:3]}")
        if not frames:
            raise _not_found(f"the file list {file_list} names no frame with depth")
        return frames
    frames = glob_frames(sync)
    if not frames:
        raise _not_found(f"searched {root} for a file list ({' or '.join(FILE_LISTS)}) and "
                         f"{sync}/*/rgb_*.jpg with sync_depth_*.png beside it: found none")
    return frames


def read_depth_png(path: Path, min_depth: float, max_depth: float) -> np.ndarray:
    """float32 metres (PNG / 1000) with everything outside (min_depth, max_depth] set to 0."""
    with Image.open(path) as png:
        raw = np.asarray(png)
    if raw.ndim != 2 or not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"{path}: expected a single-channel 16-bit depth PNG, got {raw.dtype} {raw.shape}")
    depth = raw.astype(np.float32) / DEPTH_SCALE
    depth[(depth <= min_depth) | (depth > max_depth)] = 0.0
    return depth


class NYUSync(Dataset):
    """Items ``(image [3,H,W] in [0,1], depth float32 [h,w] in m, 0 = invalid)`` read lazily:
    S x S both under ``sizing="square"``; under ``"short_side"`` the image's short side is S and the
    depth keeps its native 480 x 640 (augmented head training crops them together)."""

    def __init__(self, frames: list[Frame], image_size: int, min_depth: float, max_depth: float,
                 sizing: Sizing = "square") -> None:
        self.frames, self.image_size, self.sizing = frames, image_size, sizing
        self.min_depth, self.max_depth = min_depth, max_depth

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, png = self.frames[i]
        with Image.open(rgb) as jpg:
            image = np.asarray(jpg.convert("RGB"))
        depth = read_depth_png(png, self.min_depth, self.max_depth)
        if image.shape[:2] != depth.shape:
            raise ValueError(f"{rgb} is {image.shape[:2]} but {png} is {depth.shape}")
        return (sized_image_to_tensor(image, self.image_size, self.sizing),
                depth_to_tensor(depth, target_size(self.image_size, self.sizing)))

    def native_size(self, i: int) -> tuple[int, int]:
        """(H, W) of frame ``i``'s depth PNG, from its header."""
        with Image.open(self.frames[i][1]) as png:
            return png.height, png.width


def build_nyu_sync(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                   sizing: Sizing = "square") -> Dataset:
    """Train/val carved (``pick_split``) from the sync frames, sized by ``sizing`` (``NYUSync``)."""
    if split == "test":
        raise ValueError("the NYUv2 sync frames train heads only; the test split is the labelled .mat's")
    frames = sync_frames(cfg.root)
    chosen = [frames[i] for i in pick_split(len(frames), split, cfg.val_fraction)]
    return NYUSync(chosen, image_size, info.min_depth, info.max_depth, sizing)
