"""VOC 2012, ADE20K and Cityscapes (``ssl_robust.data.segmentation``) loaded from official-format fixtures
through the registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_robust.config import DataCfg
from ssl_robust.data.base import DatasetNotFoundError
from ssl_robust.data.load import load_split
from ssl_robust.data.transforms import mask_to_tensor

from .fixtures import write_ade20k, write_cityscapes, write_voc

CITYSCAPES_EXPECTED = {0: 255, 1: 255, 7: 0, 8: 1, 24: 11, 33: 18, 255: 255}
EXPECTED = {  # the raw -> train label mapping each data set must apply, written out independently
    "voc2012": lambda raw: raw.astype(np.int64),
    "ade20k": lambda raw: np.where(raw == 0, 255, raw.astype(np.int64) - 1),
    "cityscapes": lambda raw: np.vectorize(CITYSCAPES_EXPECTED.get)(raw).astype(np.int64),
}
CASES = [  # name, writer, official train / test keys of what the writer returns, num_classes
    ("voc2012", write_voc, "train", "val", 21),
    ("ade20k", write_ade20k, "training", "validation", 150),
    ("cityscapes", write_cityscapes, "train", "val", 19),
]


@pytest.mark.parametrize("name,writer,train_key,test_key,num_classes", CASES)
def test_splits_shapes_and_label_mapping(tmp_path, name, writer, train_key, test_key, num_classes):
    written = writer(tmp_path)
    cfg = DataCfg(name=name, root=tmp_path)
    splits = {s: load_split(cfg, s, image_size=28)[0] for s in ("train", "val", "test")}
    info = load_split(cfg, "test", image_size=28)[1]
    assert info.task == "segmentation" and info.num_classes == num_classes and info.ignore_index == 255
    assert len(splits["train"]) + len(splits["val"]) == len(written[train_key])
    assert len(splits["test"]) == len(written[test_key])
    for dataset in splits.values():
        for image, mask in dataset:
            assert image.shape == (3, 28, 28) and image.dtype == torch.float32
            assert 0.0 <= image.min() and image.max() <= 1.0
            assert mask.shape == (28, 28) and mask.dtype == torch.long
            labels = set(mask.unique().tolist())
            assert labels <= set(range(num_classes)) | {255}
    for (_, mask), raw in zip(splits["test"], written[test_key], strict=True):
        assert torch.equal(mask, mask_to_tensor(EXPECTED[name](raw), 28))


def test_voc_masks_are_palette_pngs(voc_data):
    root, _ = voc_data
    path = next((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))
    with Image.open(path) as mask:
        assert mask.mode == "P"


@pytest.mark.parametrize("inner", ["VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_root_may_point_inside_the_devkit(voc_data, inner):
    root, written = voc_data
    test, _ = load_split(DataCfg(name="voc2012", root=root / inner), "test", image_size=28)
    assert len(test) == len(written["val"])


def test_voc_without_background_ignores_it_and_has_20_classes(voc_data):
    root, written = voc_data
    kept, info_kept = load_split(DataCfg(name="voc2012", root=root), "test", image_size=28)
    test, info = load_split(DataCfg(name="voc2012", root=root, voc_background="exclude"), "test", image_size=28)
    assert (info_kept.num_classes, info.num_classes, info.ignore_index) == (21, 20, 255)
    for (_, mask), (_, mask_kept), raw in zip(test, kept, written["val"], strict=True):
        resized_raw = mask_to_tensor(raw, 28)
        assert torch.equal(mask == 255, (resized_raw == 0) | (resized_raw == 255))  # background and void
        objects = (resized_raw > 0) & (resized_raw < 255)
        assert torch.equal(mask[objects], resized_raw[objects] - 1)  # 1..20 -> 0..19
        assert torch.equal(mask_kept, resized_raw)
    train, _ = load_split(DataCfg(name="voc2012", root=root, voc_background="exclude"), "train", image_size=28)
    for split in (test, train):  # the head never trains on background either; fixture values 0, 5, 20, 255
        assert set(torch.cat([m.flatten() for _, m in split]).unique().tolist()) == {4, 19, 255}


def test_ade_zero_is_ignored_and_labels_shift_down(ade20k_data):
    root, written = ade20k_data
    test, _ = load_split(DataCfg(name="ade20k", root=root), "test", image_size=28)
    raw, mask = written["validation"][0], test[0][1]
    resized_raw = mask_to_tensor(raw, 28)
    assert torch.equal(mask == 255, resized_raw == 0)
    assert torch.equal(mask[resized_raw > 0], resized_raw[resized_raw > 0] - 1)


@pytest.mark.parametrize("name,writer,bad,match", [
    ("voc2012", write_voc, 30, r"2012_train_000000\.png holds label value\(s\) \[30\]"),
    ("ade20k", write_ade20k, 151, r"ADE_train_00000001\.png holds label value\(s\) \[151\]"),
    ("cityscapes", write_cityscapes, 40, r"aachen_000000_000019_gtFine_labelIds\.png .*\[40\]"),
])
def test_unknown_label_value_raises(tmp_path, name, writer, bad, match):
    writer(tmp_path, bad_label=bad)
    cfg = DataCfg(name=name, root=tmp_path)
    with pytest.raises(ValueError, match=match):
        for split in ("train", "val"):
            for _ in load_split(cfg, split, image_size=28)[0]:
                pass


def test_rgb_colour_mask_is_rejected(voc_data):
    root, _ = voc_data
    path = next((root / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("2012_val_*.png"))
    Image.open(path).convert("RGB").save(path)
    test, _ = load_split(DataCfg(name="voc2012", root=root), "test", image_size=28)
    with pytest.raises(ValueError, match="single-channel"):
        [item for item in test]


MISSING = [  # name, writer, a path (relative to root) to delete, expected-file text in the message
    ("voc2012", write_voc, "VOCdevkit/VOC2012/SegmentationClass/2012_val_000001.png",
     "VOCdevkit/VOC2012/JPEGImages", "host.robots.ox.ac.uk/pascal/VOC/voc2012"),
    ("ade20k", write_ade20k, "ADEChallengeData2016/annotations/validation/ADE_val_00000002.png",
     "ADEChallengeData2016/images/validation", "sceneparsing.csail.mit.edu"),
    ("cityscapes", write_cityscapes, "gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelIds.png",
     "leftImg8bit/val", "leftImg8bit_trainvaltest.zip"),
]


@pytest.mark.parametrize("name,writer,victim,expected,how", MISSING)
def test_missing_root_and_file(tmp_path, name, writer, victim, expected, how):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(DataCfg(name=name, root=missing), "test", image_size=28)
    message = str(err.value)
    assert name in message and str(missing) in message and expected in message and how in message
    writer(tmp_path)
    (tmp_path / victim).unlink()
    with pytest.raises(DatasetNotFoundError, match=victim.rsplit("/", 1)[-1]):
        load_split(DataCfg(name=name, root=tmp_path), "test", image_size=28)
    assert len(load_split(DataCfg(name=name, root=tmp_path), "train", image_size=28)[0]) > 0


def test_missing_split_list_names_it(voc_data):
    root, _ = voc_data
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="ImageSets/Segmentation/val.txt"):
        load_split(DataCfg(name="voc2012", root=root), "test", image_size=28)
