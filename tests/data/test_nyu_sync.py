"""NYUv2 raw training frames in BTS's sync layout (``data.nyu_train: sync``), from a tiny fixture."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_robust.cell import run_cell
from ssl_robust.config import CellCfg, DataCfg
from ssl_robust.data.base import DatasetNotFoundError
from ssl_robust.data.depth import NYUDepth
from ssl_robust.data.load import load_split
from ssl_robust.data.nyu_sync import NYUSync
from ssl_robust.data.transforms import depth_to_tensor, image_to_tensor

from .fixtures import NYU_SYNC_LIST, write_nyu_sync, write_nyuv2
from .test_cells_on_fixtures import TINY_ENCODER


def _sync(root, **kwargs) -> DataCfg:
    return DataCfg(name="nyuv2", root=root, nyu_train="sync", val_fraction=0.25, **kwargs)


def _frames(root, **kwargs) -> tuple[list, list]:
    train, _ = load_split(_sync(root, **kwargs), "train", image_size=32)
    val, _ = load_split(_sync(root, **kwargs), "val", image_size=32)
    assert isinstance(train, NYUSync) and isinstance(val, NYUSync)
    return train.frames, val.frames


def _expected_metres(depth_mm: np.ndarray) -> np.ndarray:
    metres = depth_mm.astype(np.float32) / 1000
    return np.where((metres > 1e-3) & (metres <= 10.0), metres, 0).astype(np.float32)


def test_sync_frames_load_as_square_images_and_depth_in_metres(tmp_path):
    written = write_nyu_sync(tmp_path)  # 48 x 64 frames: resized to 40 x 40
    train, info = load_split(_sync(tmp_path), "train", image_size=40)
    val, _ = load_split(_sync(tmp_path), "val", image_size=40)
    assert info.min_depth == 1e-3 and info.max_depth == 10.0
    assert len(train) + len(val) == 6 and len(val) == 2
    for dataset in (train, val):
        for (image, depth), (rgb, png) in zip(dataset, dataset.frames, strict=True):
            k = written["rgb"].index(rgb)
            assert png == written["depth"][k]
            assert image.shape == (3, 40, 40) and image.dtype == torch.float32
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert torch.equal(image, image_to_tensor(np.asarray(Image.open(rgb).convert("RGB")), 40))
            assert depth.shape == (40, 40) and depth.dtype == torch.float32
            assert torch.equal(depth, depth_to_tensor(_expected_metres(written["depth_mm"][k]), 40))


def test_depth_is_png_over_1000_and_zero_outside_the_range(tmp_path):
    written = write_nyu_sync(tmp_path, shape=(32, 32))  # no resizing at S = 32
    train, _ = load_split(_sync(tmp_path), "train", image_size=32)
    for (_, depth), (rgb, _) in zip(train, train.frames, strict=True):
        depth_mm = written["depth_mm"][written["rgb"].index(rgb)]
        assert depth[0, :4].tolist() == [0.0, 10.0, 0.0, 0.0]  # written 0, 10000, 12000, 65535 mm
        valid = (depth_mm > 1) & (depth_mm <= 10000)
        assert torch.equal(depth[valid], torch.from_numpy(depth_mm[valid].astype(np.float32) / 1000))
        assert (depth[~valid] == 0).all()


def test_train_and_val_are_disjoint_complete_and_deterministic(tmp_path):
    written = write_nyu_sync(tmp_path, n_scenes=3, frames=4)
    train, val = _frames(tmp_path)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(zip(written["rgb"], written["depth"]))
    assert len(val) == 3  # round(12 * 0.25)
    assert _frames(tmp_path) == (train, val)


@pytest.mark.parametrize("list_name", [NYU_SYNC_LIST, "nyu_train.txt"])
def test_file_list_wins_over_the_glob(tmp_path, list_name):
    written = write_nyu_sync(tmp_path, file_list=False)
    chosen = [5, 0, 3, 2]
    lines = [written["lines"][k] for k in chosen]
    lines.insert(1, "/scene_0000/rgb_00021.jpg None 518.8579")  # a frame without depth: skipped
    (tmp_path / list_name).write_text("\n".join(lines) + "\n\n")
    train, val = _frames(tmp_path)
    assert sorted(train + val) == sorted((written["rgb"][k], written["depth"][k]) for k in chosen)


def test_without_a_file_list_every_rgb_with_depth_is_found(tmp_path):
    written = write_nyu_sync(tmp_path, file_list=False)  # scene 0 also holds an rgb without depth
    train, val = _frames(tmp_path)
    assert sorted(train + val) == list(zip(written["rgb"], written["depth"]))


def test_missing_sync_data_names_the_setting_and_the_searched_path(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(_sync(tmp_path / "nowhere"), "train", image_size=32)
    message = str(err.value)
    assert "data.nyu_train" in message and str(tmp_path / "nowhere") in message and "sync" in message
    assert "github.com/cleinc/bts" in message

    (tmp_path / "sync" / "scene_0000").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(_sync(tmp_path), "val", image_size=32)
    message = str(err.value)
    assert "data.nyu_train" in message and str(tmp_path / "sync") in message and NYU_SYNC_LIST in message

    written = write_nyu_sync(tmp_path)
    written["depth"][4].unlink()
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(_sync(tmp_path), "train", image_size=32)
    message = str(err.value)
    assert "data.nyu_train" in message and str(tmp_path / NYU_SYNC_LIST) in message
    assert str(written["depth"][4]) in message


def test_test_split_stays_the_labelled_mat(tmp_path):
    write_nyu_sync(tmp_path)
    train, _ = load_split(_sync(tmp_path), "train", image_size=32)  # the .mat is not needed for it
    assert len(train) == 4
    with pytest.raises(DatasetNotFoundError, match="nyu_depth_v2_labeled.mat"):
        load_split(_sync(tmp_path), "test", image_size=32)
    written = write_nyuv2(tmp_path)
    test, _ = load_split(_sync(tmp_path, n_samples=None), "test", image_size=32)
    assert isinstance(test, NYUDepth) and test.indices == written["test"]


def test_cell_fits_a_depth_head_on_sync_frames(tmp_path, monkeypatch):
    write_nyuv2(tmp_path)  # the test split
    write_nyu_sync(tmp_path)
    read = []
    original = NYUSync.__getitem__
    monkeypatch.setattr(NYUSync, "__getitem__", lambda self, i: read.append(i) or original(self, i))
    cfg = CellCfg.model_validate({
        "encoder": TINY_ENCODER,
        "data": {"name": "nyuv2", "root": str(tmp_path), "n_samples": None, "val_fraction": 0.25,
                 "nyu_train": "sync"},
        "head": {"epochs": 2, "batch_size": 8, "n_bins": 16},
        "attack": {"name": "depthpgd", "eps": "8/255", "steps": 2},
        "batch_size": 4,
    })
    metrics = run_cell(cfg, out_dir=tmp_path / "out")
    assert len(read) == 6  # every sync frame once: 4 train + 2 val
    assert {"clean/rmse", "adv/rmse"} <= metrics.keys()
    assert np.isfinite(metrics["clean/rmse"]) and np.isfinite(metrics["head/val_score"])
    assert metrics["check/eps0_equals_clean"] == 1.0
