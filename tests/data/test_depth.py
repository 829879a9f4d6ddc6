"""NYU Depth v2 (``ssl_robust.data.depth``) loaded from an HDF5 .mat + splits.mat fixture through the registry."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.io
import torch
from torch.utils.data import DataLoader

from ssl_robust.config import DataCfg
from ssl_robust.data.base import DatasetNotFoundError
from ssl_robust.data.load import load_split
from ssl_robust.data.depth import eigen_crop_mask
from ssl_robust.data.transforms import depth_to_tensor, image_to_tensor

from .fixtures import write_nyuv2


def _expected_depth(raw: np.ndarray, crop: bool) -> np.ndarray:
    """Valid (0, 10] m kept, everything else 0; Eigen crop on a 96x128 frame = rows 9:94, cols 8:120."""
    depth = np.where(np.isfinite(raw) & (raw > 0) & (raw <= 10), raw, 0).astype(np.float32)
    if crop:
        keep = np.zeros_like(depth, dtype=bool)
        keep[9:94, 8:120] = True
        depth[~keep] = 0
    return depth


def test_eigen_crop_on_the_full_frame_is_the_standard_one():
    mask = eigen_crop_mask(480, 640)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (45, 471, 41, 601)
    assert mask.sum() == (471 - 45) * (601 - 41)


def test_splits_shapes_and_metres(nyuv2_data):
    root, written = nyuv2_data
    cfg = DataCfg(name="nyuv2", root=root)
    train, info = load_split(cfg, "train", image_size=28)
    val, _ = load_split(cfg, "val", image_size=28)
    test, _ = load_split(cfg, "test", image_size=28)
    assert info.task == "depth" and info.min_depth == 1e-3 and info.max_depth == 10.0
    assert (len(train) + len(val), len(val), len(test)) == (6, 1, 4)
    for dataset in (train, val, test):
        for image, depth in dataset:
            assert image.shape == (3, 28, 28) and image.dtype == torch.float32
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert depth.shape == (28, 28) and depth.dtype == torch.float32
            assert torch.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 10.0
            assert (depth > 0).any()


@pytest.mark.parametrize("eigen_crop", [True, False])
def test_test_split_matches_written_depth(nyuv2_data, eigen_crop):
    root, written = nyuv2_data
    test, _ = load_split(DataCfg(name="nyuv2", root=root, eigen_crop=eigen_crop), "test", image_size=28)
    for (image, depth), k in zip(test, written["test"], strict=True):
        assert torch.allclose(image, image_to_tensor(written["images"][k], 28))
        assert torch.equal(depth, depth_to_tensor(_expected_depth(written["depths"][k], eigen_crop), 28))


def test_invalid_depth_zeroed_and_ten_metres_kept(nyuv2_data):
    root, _ = nyuv2_data
    test, _ = load_split(DataCfg(name="nyuv2", root=root, eigen_crop=False), "test", image_size=128)
    for _, depth in test:  # the fixture writes [0, 12, NaN, 10] m at row 0, cols 0..3
        assert depth[0, :4].tolist() == [0.0, 0.0, 0.0, 10.0]


def test_crop_applies_to_test_split_only(nyuv2_data):
    root, _ = nyuv2_data
    cfg = DataCfg(name="nyuv2", root=root, eigen_crop=True, val_fraction=0.5)
    train, _ = load_split(cfg, "train", image_size=32)
    assert all((depth[0] > 0).any() for _, depth in train)
    test, _ = load_split(cfg, "test", image_size=32)
    assert all((depth[0] == 0).all() for _, depth in test)


def test_dataset_pickles_and_loads_in_workers_after_reading(nyuv2_data):
    root, _ = nyuv2_data
    test, _ = load_split(DataCfg(name="nyuv2", root=root), "test", image_size=28)
    first = test[0]  # opens the HDF5 file in this process
    clone = pickle.loads(pickle.dumps(test))
    assert torch.equal(clone[0][1], first[1])
    batches = list(DataLoader(test, batch_size=2, num_workers=2))
    assert torch.equal(batches[0][1][0], first[1])


def test_missing_root_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(DataCfg(name="nyuv2", root=missing), "test", image_size=28)
    message = str(err.value)
    assert "nyuv2" in message and str(missing) in message and "nyu_depth_v2_labeled.mat" in message
    assert "cs.nyu.edu/~fergus/datasets/nyu_depth_v2.html" in message
    write_nyuv2(tmp_path)
    (tmp_path / "splits.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match="splits.mat"):
        load_split(DataCfg(name="nyuv2", root=tmp_path), "test", image_size=28)


def test_split_index_out_of_range_raises(nyuv2_data):
    root, _ = nyuv2_data
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1.0], [2.0]]),
                                           "testNdxs": np.array([[3.0], [11.0]])})
    with pytest.raises(ValueError, match=r"testNdxs holds index 11 outside 1\.\.10"):
        load_split(DataCfg(name="nyuv2", root=root), "test", image_size=28)


def test_non_hdf5_mat_is_a_value_error(nyuv2_data):
    root, _ = nyuv2_data
    (root / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file, not v7.3")
    with pytest.raises(ValueError, match="HDF5"):
        load_split(DataCfg(name="nyuv2", root=root), "test", image_size=28)
