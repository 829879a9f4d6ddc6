"""Head-training augmentations: each image moves with its own target, and a seed fixes the batch."""
from __future__ import annotations

import pytest
import torch

from ssl_robust.augment import augment_pairs


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _coded(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose first channel and whose label map both hold each pixel's index: a crop or flip
    of the one must be the same crop or flip of the other."""
    index = torch.arange(height * width, dtype=torch.float32).view(height, width)
    image = torch.stack([index / index.max(), torch.zeros_like(index), torch.ones_like(index)])
    return image, index.long()


def test_crop_flip_moves_a_label_map_with_its_image() -> None:
    pairs = [_coded(12, 20) for _ in range(16)]
    x, y = augment_pairs(*zip(*pairs), "crop_flip", 8, _gen())
    assert x.shape == (16, 3, 8, 8) and y.shape == (16, 8, 8)
    biggest = 12 * 20 - 1
    assert torch.equal((x[:, 0] * biggest).round().long(), y)
    assert len({tuple(m[0, :2].tolist()) for m in y}) > 4  # different crops and flips per image
    flipped = [bool(m[0, 0] > m[0, 1]) for m in y]
    assert any(flipped) and not all(flipped)


def test_crop_flip_resizes_a_native_map_to_its_image_first() -> None:
    image = torch.rand(3, 8, 16)
    native = torch.arange(2).repeat_interleave(16).view(1, 32).expand(16, 32).contiguous()  # left half 0, right 1
    _, y = augment_pairs([image], [native], "crop_flip", 8, _gen())
    assert y.shape == (1, 8, 8) and set(y.unique().tolist()) <= {0, 1}


def test_crop_flip_of_a_classification_image_crops_it_zero_padded_by_an_eighth() -> None:
    image = torch.rand(3, 16, 16).add(0.01).clamp(max=1)  # no zero pixel inside
    x, labels = augment_pairs([image] * 64, list(range(64)), "crop_flip", 16, _gen())
    assert x.shape == (64, 3, 16, 16) and labels.tolist() == list(range(64))
    zero_rows = (x == 0).all(dim=1).all(dim=-1).sum(dim=-1)  # rows of padding that entered each crop
    assert int(zero_rows.max()) <= 2 and int(zero_rows.max()) >= 1  # padding 16 / 8 = 2 px


def test_flip_mirrors_about_half_of_the_images_and_their_maps() -> None:
    pairs = [_coded(6, 6) for _ in range(200)]
    x, y = augment_pairs(*zip(*pairs), "flip", 6, _gen())
    flipped = (y[:, 0, 0] == 5)
    assert torch.equal(y[flipped], pairs[0][1].flip(-1).expand(int(flipped.sum()), 6, 6))
    assert torch.equal(x[~flipped], pairs[0][0].expand(int((~flipped).sum()), 3, 6, 6))
    assert 60 < int(flipped.sum()) < 140


def test_none_stacks_the_batch_unchanged() -> None:
    pairs = [_coded(4, 4) for _ in range(3)]
    x, y = augment_pairs(*zip(*pairs), "none", 4, _gen())
    assert torch.equal(x, torch.stack([p[0] for p in pairs])) and torch.equal(y, torch.stack([p[1] for p in pairs]))


def test_a_seed_fixes_the_augmented_batch() -> None:
    pairs = [_coded(10, 14) for _ in range(8)]
    first, second = (augment_pairs(*zip(*pairs), "crop_flip", 8, _gen(3)) for _ in range(2))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    other = augment_pairs(*zip(*pairs), "crop_flip", 8, _gen(4))
    assert not torch.equal(first[1], other[1])


def test_a_crop_larger_than_the_image_is_an_error() -> None:
    with pytest.raises(ValueError, match="random 8x8 crop needs images of at least that size, got 6x10"):
        augment_pairs([torch.rand(3, 6, 10)], [torch.zeros(6, 10, dtype=torch.long)], "crop_flip", 8, _gen())


def test_an_unknown_mode_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"head.augment: unknown mode 'rrc'; allowed: \['none', 'flip', 'crop_flip'\]"):
        augment_pairs([torch.rand(3, 4, 4)], [0], "rrc", 4, _gen())
