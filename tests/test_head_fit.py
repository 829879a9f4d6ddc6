"""Phase 1 of a cell (``ssl_robust.head_fit``): ``prepare_head`` fits the linear head on the frozen
encoder and saves it; the depth head's bins span the data set's range, the feature cache on disk
gives the head the cache in memory gives, and dense augmentations read short-side train images and
crop them anew every epoch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssl_robust import heads as heads_module
from ssl_robust.head_fit import fit_splits, prepare_head
from tests.data.fixtures import write_ade20k
from tests.helpers import TINY_IMAGE_SIZE


def test_a_head_is_saved_into_a_folder_created_with_its_parents(make_cell_cfg, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "head.safetensors"
    prepare_head(make_cell_cfg("classification", head={"epochs": 1}), path)
    assert path.is_file()


def test_depth_head_bins_span_the_data_sets_depth_range(make_cell_cfg, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from ssl_robust.data import DATASETS

    cfg = make_cell_cfg("depth", head={"epochs": 1, "n_bins": 16})
    prepare_head(cfg, tmp_path / "head.safetensors")
    centres = load_file(str(tmp_path / "head.safetensors"))["centres"].flatten()
    info = DATASETS.get("synthetic").infos["depth"]
    assert centres.numel() == 16
    assert float(centres[0]) == pytest.approx(info.min_depth) and float(centres[-1]) == pytest.approx(info.max_depth)


def test_head_from_the_disk_feature_cache_equals_the_head_from_memory(make_cell_cfg, tmp_path: Path) -> None:
    prepare_head(make_cell_cfg("segmentation", head={"features": "disk", "epochs": 3}), tmp_path / "disk.safetensors")
    prepare_head(make_cell_cfg("segmentation", head={"features": "memory", "epochs": 3}), tmp_path / "mem.safetensors")
    disk, memory = load_file(str(tmp_path / "disk.safetensors")), load_file(str(tmp_path / "mem.safetensors"))
    assert disk.keys() == memory.keys()
    assert all(torch.equal(disk[k], memory[k]) for k in disk)


# ----------------------------------------------------------------------------- augmentations


def _ade_head_cfg(make_cell_cfg, root: Path, augment: str):
    return make_cell_cfg("segmentation", data={"name": "ade20k", "root": str(root), "task": "segmentation",
                                               "n_train": None, "n_val": None, "n_samples": 2},
                         head={"epochs": 2, "batch_size": 4, "augment": augment})


def test_dense_crop_flip_reads_train_images_short_side_and_val_images_square(make_cell_cfg, tmp_path: Path) -> None:
    write_ade20k(tmp_path, shape=(36, 48))
    train, val = fit_splits(_ade_head_cfg(make_cell_cfg, tmp_path, "crop_flip"), TINY_IMAGE_SIZE)
    (image, mask), (val_image, val_mask) = train[0], val[0]
    assert image.shape == (3, 28, 37) and mask.shape == (36, 48)  # short side 28; the map at native size
    assert val_image.shape == (3, 28, 28) and val_mask.shape == (28, 28)
    plain, _ = fit_splits(_ade_head_cfg(make_cell_cfg, tmp_path, "none"), TINY_IMAGE_SIZE)
    assert plain[0][0].shape == (3, 28, 28)


def test_an_augmented_head_sees_newly_augmented_batches_every_epoch(make_cell_cfg, tmp_path: Path,
                                                                     monkeypatch) -> None:
    write_ade20k(tmp_path, shape=(36, 48))
    calls: list[tuple[str, tuple[int, ...]]] = []
    real = heads_module.augment_pairs

    def spying(images, targets, mode, size, generator):
        out = real(images, targets, mode, size, generator)
        calls.append((mode, tuple(out[0].shape), out[1].clone()))
        return out

    monkeypatch.setattr(heads_module, "augment_pairs", spying)
    metrics = prepare_head(_ade_head_cfg(make_cell_cfg, tmp_path, "crop_flip"), tmp_path / "head.safetensors")
    train = len(fit_splits(_ade_head_cfg(make_cell_cfg, tmp_path, "crop_flip"), TINY_IMAGE_SIZE)[0])
    per_epoch = -(-train // 4)
    assert len(calls) == 2 * per_epoch and {mode for mode, _, _ in calls} == {"crop_flip"}
    assert all(shape[1:] == (3, 28, 28) for _, shape, _ in calls)
    assert not torch.equal(calls[0][2], calls[per_epoch][2])  # the second epoch crops anew
    assert metrics["head/feature_bytes"] > 0 and (tmp_path / "head.safetensors").exists()
