"""ImageNet (``ssl_robust.data.imagenet``) loaded from official-format fixtures through the registry:
both validation layouts, the class order, and errors that name the folder or archive."""
from __future__ import annotations

import pytest
import torch

from ssl_robust.config import DataCfg
from ssl_robust.data.base import LOADERS, DatasetNotFoundError
from ssl_robust.data.load import load_split
from ssl_robust.data.safe_pickle import DataFileError
from ssl_robust.data.transforms import resize_image

from .fixtures import IMAGENET_WNIDS, write_imagenet


@pytest.mark.parametrize("flat_val", [False, True], ids=["val-wnid-folders", "val-flat-devkit"])
def test_imagenet_splits_labels_and_pixels(tmp_path, flat_val):
    """Both validation layouts torchvision knows give the same labels: folders, or the flat
    extraction labelled by the devkit (whose ILSVRC2012_IDs are not the sorted-wnid indices)."""
    written = write_imagenet(tmp_path, flat_val=flat_val)
    cfg = DataCfg(name="imagenet", root=tmp_path)
    (train, info), (val, _), (test, _) = (load_split(cfg, split, image_size=24) for split in ("train", "val", "test"))
    assert info.task == "classification" and info.num_classes == 1000
    assert (len(train) + len(val), len(val), len(test)) == (9, 1, 6)
    assert sorted(label for _, label in [*train, *val]) == sorted(written["train"]["labels"])
    assert [label for _, label in test] == written["test"]["labels"]
    for (image, _), expected in zip(test, written["test"]["images"], strict=True):
        pixels = torch.from_numpy(expected).permute(2, 0, 1).float() / 255
        assert torch.allclose(image, resize_image(pixels, 24))  # squashed to S x S like every classification set
    assert LOADERS.get("imagenet")(cfg, "test", info, 24).native_size(0) == written["test"]["images"].shape[1:3]


def test_imagenet_classes_are_the_sorted_wnid_folders(tmp_path):
    """Class k is the k-th wnid folder of train/, as in torchvision's ImageFolder."""
    write_imagenet(tmp_path)
    cfg = DataCfg(name="imagenet", root=tmp_path, val_fraction=0.5)
    train, _ = load_split(cfg, "train", image_size=8)
    files = train.files
    for k in train.indices:
        assert files.path(int(k)).parent.name == IMAGENET_WNIDS[int(files.labels[k])]


def test_imagenet_missing_root_names_the_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_split(DataCfg(name="imagenet", root=tmp_path / "nowhere"), "test", image_size=8)
    message = str(err.value)
    for expected in ("imagenet", "nowhere", "train", "val", "ILSVRC2012_img_train.tar", "ILSVRC2012_devkit_t12.tar.gz"):
        assert expected in message
    with pytest.raises(DatasetNotFoundError, match="imagenet.*needs data.root"):
        load_split(DataCfg(name="imagenet"), "train", image_size=8)


def test_imagenet_flat_val_without_devkit_names_the_archive(tmp_path):
    write_imagenet(tmp_path, flat_val=True)
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"no <wnid>/ folders.*ILSVRC2012_devkit_t12\.tar\.gz.*missing"):
        load_split(DataCfg(name="imagenet", root=tmp_path), "test", image_size=8)


@pytest.mark.parametrize("damage, match", [
    (lambda root: (root / "train" / "cats").mkdir(), r"\['cats'\] that are not WordNet ids"),
    (lambda root: (root / "train" / "n09999999").mkdir(), r"\['n09999999'\] without images"),
    (lambda root: (root / "val" / "n09999999").mkdir(), r"val has class folder\(s\) \['n09999999'\] that train/ lacks"),
])
def test_imagenet_bad_folders_name_the_folder(tmp_path, damage, match):
    write_imagenet(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataFileError, match=match):
        for split in ("train", "test"):
            load_split(DataCfg(name="imagenet", root=tmp_path), split, image_size=8)


def test_imagenet_flat_val_file_outside_the_ground_truth_is_named(tmp_path):
    write_imagenet(tmp_path, flat_val=True, n_val=3)
    stray = tmp_path / "val" / "ILSVRC2012_val_00000009.JPEG"
    stray.write_bytes((tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").read_bytes())
    with pytest.raises(DataFileError, match=r"ILSVRC2012_val_00000009\.JPEG is not .* n in 1\.\.3"):
        load_split(DataCfg(name="imagenet", root=tmp_path), "test", image_size=8)
