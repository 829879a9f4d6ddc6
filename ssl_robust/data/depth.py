"""NYU Depth v2 (labelled subset) from ``nyu_depth_v2_labeled.mat`` and ``splits.mat``.

The .mat is MATLAB v7.3 (HDF5): h5py sees MATLAB's arrays with their axes reversed, so
``images`` is [N, 3, W, H] uint8 and ``depths`` is [N, W, H] in metres. ``splits.mat`` holds the
standard 1-based ``trainNdxs`` (795) and ``testNdxs`` (654). Depth outside (0, max_depth] is
invalid (0). The Eigen crop invalidates depth outside rows 45:471, cols 41:601 of a 480x640 frame.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.io
import torch
from torch.utils.data import Dataset

from ssl_robust.data.base import LOADERS, Split, pick_split, require_files
from ssl_robust.data.catalog import TaskInfo
from ssl_robust.data.nyu_sync import build_nyu_sync
from ssl_robust.data.transforms import Sizing, depth_to_tensor, sized_image_to_tensor, target_size
from ssl_robust.config import DataCfg


NYU_MAT = "nyu_depth_v2_labeled.mat"
NYU_SPLITS = "splits.mat"
EIGEN_FRAME = (480, 640)
EIGEN_CROP = (45, 471, 41, 601)  # top, bottom, left, right on the 480x640 frame


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """Bool [height, width]: True inside the Eigen crop, scaled from the 480x640 frame."""
    top, bottom, left, right = EIGEN_CROP
    sy, sx = height / EIGEN_FRAME[0], width / EIGEN_FRAME[1]
    mask = np.zeros((height, width), dtype=bool)
    mask[round(top * sy):round(bottom * sy), round(left * sx):round(right * sx)] = True
    return mask


def clean_depth(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """float32 depth in metres with everything outside (0, max_depth] (and NaN) set to 0."""
    depth = np.nan_to_num(np.asarray(depth, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    depth[(depth <= 0) | (depth > max_depth)] = 0.0
    return depth


def check_nyu_mat(path: Path) -> int:
    """Number of images in the .mat after checking its datasets, dtypes and shapes."""
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not an HDF5 (MATLAB v7.3) file ({err})") from err
    with handle:
        missing = [key for key in ("images", "depths") if key not in handle]
        if missing:
            raise ValueError(f"{path}: missing dataset(s) {missing}")
        images, depths = handle["images"], handle["depths"]
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{path}: 'images' is {images.dtype} {images.shape}, "
                             f"expected uint8 [N, 3, W, H]")
        expected = (images.shape[0], *images.shape[2:])
        if depths.shape != expected:
            raise ValueError(f"{path}: 'depths' is {depths.shape}, expected {expected} (N, W, H)")
        return int(images.shape[0])


def read_nyu_splits(path: Path, total: int) -> tuple[list[int], list[int]]:
    """0-based (train, test) indices from the 1-based ``trainNdxs``/``testNdxs`` of ``splits.mat``."""
    mat = scipy.io.loadmat(path)
    out = []
    for key in ("trainNdxs", "testNdxs"):
        if key not in mat:
            keys = sorted(k for k in mat if not k.startswith("__"))
            raise ValueError(f"{path}: missing {key!r} (found {keys})")
        index = np.asarray(mat[key]).astype(np.int64).ravel()
        bad = index[(index < 1) | (index > total)]
        if bad.size:
            raise ValueError(f"{path}: {key} holds index {int(bad[0])} outside 1..{total}")
        out.append((index - 1).tolist())
    return out[0], out[1]


class NYUDepth(Dataset):
    """Items ``(image [3,H,W] in [0,1], depth float32 [h,w] in m, 0 = invalid)`` read lazily.

    ``sizing="square"``: H = W = h = w = image_size. ``"short_side"``: the image's short side is
    image_size (aspect ratio kept; 480x640 -> S x round(4S/3)) and the depth keeps the native
    480x640, with the Eigen crop (``crop``) applied at native resolution.
    """

    def __init__(self, path: Path, indices: list[int], image_size: int, max_depth: float,
                 crop: bool, sizing: Sizing = "square") -> None:
        self.path, self.indices, self.image_size = path, indices, image_size
        self.max_depth, self.crop, self.sizing = max_depth, crop, sizing
        self._handle: h5py.File | None = None
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.indices)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None  # an open HDF5 handle does not cross process boundaries
        return state

    def _file(self) -> h5py.File:
        """This process's handle (reopened after a fork: HDF5 handles must not be shared)."""
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._handle

    def native_size(self, i: int) -> tuple[int, int]:
        """(H, W) of every frame: the .mat stores [N, 3, W, H]."""
        _, _, width, height = self._file()["images"].shape
        return int(height), int(width)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        handle, k = self._file(), self.indices[i]
        image = np.asarray(handle["images"][k]).transpose(2, 1, 0)  # [3, W, H] -> [H, W, 3]
        depth = clean_depth(np.asarray(handle["depths"][k]).T, self.max_depth)  # [W, H] -> [H, W]
        if self.crop:
            depth[~eigen_crop_mask(*depth.shape)] = 0.0
        return (sized_image_to_tensor(image, self.image_size, self.sizing),
                depth_to_tensor(depth, target_size(self.image_size, self.sizing)))


def build_nyuv2(cfg: DataCfg, split: Split, info: TaskInfo, image_size: int,
                sizing: Sizing = "square") -> Dataset:
    """Train/val carved from the 795 train images (or, with ``data.nyu_train: sync``, from the raw
    sync frames: ``data/nyu_sync.py``); test = the 654 standard test images."""
    if cfg.nyu_train == "sync" and split != "test":
        return build_nyu_sync(cfg, split, info, image_size, sizing)
    root = require_files("nyuv2", cfg.root, [NYU_MAT, NYU_SPLITS])
    total = check_nyu_mat(root / NYU_MAT)
    train, test = read_nyu_splits(root / NYU_SPLITS, total)
    official = test if split == "test" else train
    chosen = [official[i] for i in pick_split(len(official), split, cfg.val_fraction)]
    crop = cfg.eigen_crop and split == "test"
    return NYUDepth(root / NYU_MAT, chosen, image_size, info.max_depth, crop, sizing)


LOADERS.register("nyuv2")(build_nyuv2)
