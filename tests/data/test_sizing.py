"""Square and short-side sizing, nearest-exact label resizing and batches of equal-sized items."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ssl_robust.config import DataCfg
from ssl_robust.data.base import size_batches
from ssl_robust.data.load import load_split, slide_stride
from ssl_robust.tasks import eval_mode, eval_sizing
from ssl_robust.data.transforms import depth_to_tensor, image_to_tensor, mask_to_tensor, short_side_size

from .fixtures import _blocks, _rng, _write_image, _write_mask, write_ade20k, write_cityscapes, write_voc
from .test_depth import _expected_depth
from .test_segmentation import EXPECTED

S = 28
SEGMENTATION = [  # name, writer, official test key, image path of the first test item (relative to root)
    ("voc2012", write_voc, "val", "VOCdevkit/VOC2012/JPEGImages/2012_val_000000.jpg"),
    ("ade20k", write_ade20k, "validation", "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg"),
    ("cityscapes", write_cityscapes, "val", "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"),
]


def _short_side(height: int, width: int) -> tuple[int, int]:
    """Written out independently: the short side becomes S, the long side is scaled and rounded."""
    scale = S / min(height, width)
    return (S, round(width * scale)) if height <= width else (round(height * scale), S)


def test_short_side_size():
    assert short_side_size(1024, 2048, 518) == (518, 1036)
    assert short_side_size(480, 640, 518) == (518, 691)
    assert short_side_size(640, 480, 224) == (299, 224)
    assert short_side_size(30, 30, 16) == (16, 16)


@pytest.mark.parametrize("name,writer,test_key,first_image", SEGMENTATION)
def test_short_side_images_keep_aspect_and_masks_stay_native(tmp_path, name, writer, test_key, first_image):
    written = writer(tmp_path)
    cfg = DataCfg(name=name, root=tmp_path)
    test, _ = load_split(cfg, "test", S, sizing="short_side")
    for (image, mask), raw in zip(test, written[test_key], strict=True):
        height, width = raw.shape
        assert height != width  # the fixtures are non-square
        assert image.shape == (3, *_short_side(height, width)) and min(image.shape[1:]) == S
        assert image.dtype == torch.float32 and 0.0 <= image.min() and image.max() <= 1.0
        assert mask.dtype == torch.long and torch.equal(mask, torch.from_numpy(EXPECTED[name](raw)))
    with Image.open(tmp_path / first_image) as raw_image:
        assert torch.allclose(test[0][0], image_to_tensor(raw_image, _short_side(*written[test_key][0].shape)))
    train, _ = load_split(cfg, "train", S)  # square stays the default
    assert all(image.shape == (3, S, S) and mask.shape == (S, S) for image, mask in train)


@pytest.mark.parametrize("eigen_crop", [True, False])
def test_nyu_short_side_depth_is_native_with_the_crop_at_native_resolution(nyuv2_data, eigen_crop):
    root, written = nyuv2_data
    test, _ = load_split(DataCfg(name="nyuv2", root=root, eigen_crop=eigen_crop), "test", S,
                         sizing="short_side")
    for (image, depth), k in zip(test, written["test"], strict=True):
        assert image.shape == (3, S, round(128 * S / 96))  # 96 x 128 frames
        assert torch.allclose(image, image_to_tensor(written["images"][k], (S, 37)))
        assert depth.dtype == torch.float32
        assert torch.equal(depth, torch.from_numpy(_expected_depth(written["depths"][k], eigen_crop)))
    assert test.native_size(0) == (96, 128)


def test_square_masks_use_nearest_exact():
    stripes = np.tile(np.array([0, 5], dtype=np.int64), (6, 2))  # [6, 4]: label 5 in columns 1 and 3
    # nearest-exact samples source column floor((j + 0.5) * 4 / 2) = 1, 3 (pixel centres); plain
    # nearest samples floor(j * 4 / 2) = 0, 2, half an input pixel to the top left
    assert mask_to_tensor(stripes, 2).tolist() == [[5, 5], [5, 5]]
    plain = torch.nn.functional.interpolate(torch.from_numpy(stripes)[None, None].float(), size=(2, 2),
                                            mode="nearest")[0, 0]
    assert plain.tolist() == [[0, 0], [0, 0]]
    depth = np.tile(np.array([1.0, 3.0], dtype=np.float32), (6, 2))
    assert depth_to_tensor(depth, 2).tolist() == [[3.0, 3.0], [3.0, 3.0]]


def test_square_loader_masks_follow_pixel_centres(voc_data):
    root, written = voc_data
    stripes = np.tile(np.array([0, 5], dtype=np.uint8), (40, 28))  # 40 x 56, 5 in odd columns
    _write_mask(root / "VOCdevkit/VOC2012/SegmentationClass/2012_val_000000.png", stripes, palette=True)
    test, _ = load_split(DataCfg(name="voc2012", root=root), "test", S)
    mask = test[0][1]  # 56 -> 28 columns: nearest-exact reads columns 1, 3, 5, ... (all 5)
    assert mask.shape == (S, S) and (mask == 5).all()


def _mix_orientations(root: Path) -> None:
    """Turn VOC val items 1 and 3 portrait (56 x 40) so the test split holds two sizes."""
    base, rng = root / "VOCdevkit" / "VOC2012", _rng(7)
    for k in (1, 3):
        name = f"2012_val_{k:06d}"
        _write_image(base / "JPEGImages" / f"{name}.jpg", rng, (56, 40))
        _write_mask(base / "SegmentationClass" / f"{name}.png", _blocks(rng, (56, 40), [0, 7]), palette=True)


def _check_batches(dataset: Dataset, batches: list[list[int]], batch_size: int) -> None:
    assert sorted(i for batch in batches for i in batch) == list(range(len(dataset)))
    assert all(0 < len(batch) <= batch_size for batch in batches)
    for batch in batches:
        shapes = {(tuple(dataset[i][0].shape), tuple(dataset[i][1].shape)) for i in batch}
        assert len(shapes) == 1


def test_size_batches_group_equal_native_sizes(voc_data):
    root, _ = voc_data
    _mix_orientations(root)
    test, _ = load_split(DataCfg(name="voc2012", root=root), "test", S, sizing="short_side")
    batches = size_batches(test, batch_size=3)
    assert batches == [[0, 2], [1, 3]] and batches == size_batches(test, batch_size=3)
    _check_batches(test, batches, 3)
    images, masks = next(iter(DataLoader(test, batch_sampler=batches)))
    assert images.shape == (2, 3, S, 39) and masks.shape == (2, 40, 56)


def test_size_batches_on_a_subset_of_synthetic_short_side():
    cfg = DataCfg(name="synthetic", task="segmentation", n_samples=9)
    test, _ = load_split(cfg, "test", 16, seed=3, sizing="short_side")
    batches = size_batches(test, batch_size=2)
    _check_batches(test, batches, 2)
    shapes = {tuple(test[b[0]][0].shape) for b in batches}
    assert shapes <= {(3, 16, 24), (3, 24, 16)} and len(shapes) == 2
    for batch in batches:
        native = {tuple(test[i][1].shape) for i in batch}
        assert native <= {(32, 48), (48, 32)}
    assert [len(x) for x, _ in DataLoader(test, batch_sampler=batches)] == [len(b) for b in batches]


def test_size_batches_without_native_size_loads_items():
    class Plain(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            size = (4, 6) if i in (1, 4) else (6, 4)
            return torch.zeros(3, *size), torch.zeros(*size)

    batches = size_batches(Plain(), batch_size=10)
    assert batches == [[0, 2, 3], [1, 4]]


def test_synthetic_short_side_is_non_square_and_square_is_unchanged():
    cfg = DataCfg(name="synthetic", task="depth", n_samples=None)
    square, _ = load_split(cfg, "test", 16)
    short, _ = load_split(cfg, "test", 16, sizing="short_side")
    assert square[0][0].shape == (3, 16, 16) and square[0][1].shape == (16, 16)
    assert short[0][0].shape == (3, 16, 24) and short[0][1].shape == (32, 48)
    assert short[1][0].shape == (3, 24, 16) and short[1][1].shape == (48, 32)
    assert torch.equal(short[0][1], load_split(cfg, "test", 16, sizing="short_side")[0][0][1])
    classification, _ = load_split(DataCfg(name="synthetic", task="classification"), "test", 16,
                                   sizing="short_side")
    assert classification[0][0].shape == (3, 16, 16)


def test_eval_mode_split_sizing_and_stride():
    dense, classification = DataCfg(task="segmentation"), DataCfg(task="classification")
    assert eval_mode(dense) == "slide" and eval_mode(classification) == "resize"
    assert eval_mode(DataCfg(task="depth", eval="resize")) == "resize"
    assert eval_sizing(dense) == "short_side" and eval_sizing(classification) == "square"
    with pytest.raises(ValueError, match="slide"):
        eval_mode(DataCfg(task="classification", eval="slide"))
    assert slide_stride(dense, 518) == 345 and slide_stride(dense, 224) == 149
    assert slide_stride(DataCfg(slide_stride=341), 518) == 341
    with pytest.raises(ValueError):
        DataCfg(slide_stride=0)
