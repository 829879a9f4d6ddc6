"""The float16 feature cache: what goes in comes back, in any order, from disk or memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_robust.features import Features


def _filled(storage: str, n: int = 10) -> tuple[Features, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    cls, tokens = torch.randn(n, 4, generator=gen), torch.randn(n, 4, 3, 3, generator=gen)
    target = torch.randint(0, 5, (n, 6, 6), generator=gen)
    features = Features(n, storage)
    for start in range(0, n, 3):
        features.append(cls[start:start + 3], tokens[start:start + 3], target[start:start + 3])
    return features, cls, tokens, target


@pytest.mark.parametrize("storage", ["disk", "memory"])
def test_batches_return_what_was_appended_as_float16(storage: str) -> None:
    features, cls, tokens, target = _filled(storage)
    got = [torch.cat(parts) for parts in zip(*features.batches(4))]
    assert torch.equal(got[0], cls.half().float()) and torch.equal(got[1], tokens.half().float())
    assert torch.equal(got[2], target)
    features.close()


@pytest.mark.parametrize("storage", ["disk", "memory"])
def test_shuffled_batches_follow_the_generators_permutation(storage: str) -> None:
    features, cls, _, target = _filled(storage)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7))
    got_cls, _, got_target = (torch.cat(parts) for parts in
                              zip(*features.batches(4, shuffle=True, generator=torch.Generator().manual_seed(7))))
    assert torch.equal(got_cls, cls.half().float()[order]) and torch.equal(got_target, target[order])
    features.close()


def test_disk_cache_is_deleted_on_close() -> None:
    features, *_ = _filled("disk")
    folder = features.folder
    assert (folder / "tokens.bin").stat().st_size == 10 * 4 * 3 * 3 * 2  # float16
    features.close()
    assert not folder.exists()


def test_features_beyond_float16_are_an_error() -> None:
    with Features(1, "memory") as features, pytest.raises(ValueError, match="float16"):
        features.append(torch.full((1, 4), 1e6), torch.zeros(1, 4), torch.zeros(1))


def test_reading_an_incomplete_cache_is_an_error() -> None:
    with Features(5, "disk") as features:
        features.append(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2))
        with pytest.raises(ValueError, match="2 of 5"):
            next(features.batches(2))


def test_rows_of_a_different_shape_are_an_error() -> None:
    with Features(4, "disk") as features:
        features.append(torch.zeros(2, 4), torch.zeros(2, 4, 3, 3), torch.zeros(2))
        with pytest.raises(ValueError, match="one shape"):
            features.append(torch.zeros(2, 4), torch.zeros(2, 4, 5, 5), torch.zeros(2))


def test_disk_reads_scattered_and_repeated_rows() -> None:
    features, cls, _, _ = _filled("disk")
    rows = features._rows["cls"]
    idx = np.array([9, 0, 1, 2, 5, 5, 3])
    assert np.array_equal(rows.read(idx), cls.half().numpy()[idx])
    features.close()


def test_integer_targets_are_stored_as_int16_and_read_back_as_int64() -> None:
    features, _, _, target = _filled("disk")
    assert (features.folder / "target.bin").stat().st_size == 10 * 6 * 6 * 2
    (_, _, got), = features.batches(10)
    assert got.dtype == torch.int64 and torch.equal(got, target)
    features.close()


def test_float_targets_keep_their_precision() -> None:
    depth = torch.rand(3, 4, 4) * 10
    with Features(3, "memory") as features:
        features.append(torch.zeros(3, 2), torch.zeros(3, 2), depth)
        (_, _, got), = features.batches(3)
    assert torch.equal(got, depth)


def test_labels_beyond_int16_are_an_error() -> None:
    with Features(1, "memory") as features, pytest.raises(ValueError, match="int16"):
        features.append(torch.zeros(1, 4), torch.zeros(1, 4), torch.tensor([40_000]))
