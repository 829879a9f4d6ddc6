"""Batches that adapt to accelerator memory: halve on out-of-memory, count only finished slices,
fail clearly when one item does not fit."""
from __future__ import annotations

import pytest
import torch

from ssl_robust.memory import AdaptiveBatch, DoesNotFit

CPU = torch.device("cpu")


def limited(fn, limit: int):
    """``fn`` on a device that runs out of memory above ``limit`` rows, recording every attempt."""
    attempts: list[int] = []

    def run(x: torch.Tensor) -> torch.Tensor:
        attempts.append(len(x))
        if len(x) > limit:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return fn(x)

    return run, attempts


def test_a_batch_that_fits_runs_in_one_slice() -> None:
    run, attempts = limited(lambda x: x * 2, limit=8)
    parts = AdaptiveBatch(8, CPU, lambda: "one row").map(run, torch.arange(8.0))
    assert attempts == [8] and torch.equal(torch.cat(parts), torch.arange(8.0) * 2)


def test_a_batch_too_large_is_halved_until_it_fits_and_covers_every_row_once_in_order() -> None:
    run, attempts = limited(lambda x: x * 2, limit=3)
    batch = AdaptiveBatch(8, CPU, lambda: "one row")
    parts = batch.map(run, torch.arange(8.0))
    assert attempts == [8, 4, 2, 2, 2, 2] and batch.size == 2
    assert torch.equal(torch.cat(parts), torch.arange(8.0) * 2)


def test_the_halved_size_stays_for_the_next_batch() -> None:
    run, attempts = limited(lambda x: x, limit=5)
    batch = AdaptiveBatch(8, CPU, lambda: "one row")
    batch.map(run, torch.arange(8.0))
    attempts.clear()
    batch.map(run, torch.arange(8.0))
    assert attempts == [4, 4]


def test_a_failed_slice_is_never_counted() -> None:
    run, _ = limited(lambda x: x, limit=1)
    done: list[int] = []
    AdaptiveBatch(4, CPU, lambda: "one row").run(4, lambda rows: run(torch.arange(4.0)[rows]),
                                                 lambda part: done.append(len(part)))
    assert done == [1, 1, 1, 1]


def test_one_item_that_does_not_fit_raises_an_error_naming_it_and_the_device() -> None:
    run, _ = limited(lambda x: x, limit=0)
    with pytest.raises(DoesNotFit, match=r"one 518x518 image through vitb14 does not fit in the memory of cpu"):
        AdaptiveBatch(4, CPU, lambda: "one 518x518 image through vitb14").map(run, torch.arange(4.0))


def test_other_errors_are_not_retried() -> None:
    attempts: list[int] = []

    def broken(x: torch.Tensor) -> torch.Tensor:
        attempts.append(len(x))
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        AdaptiveBatch(4, CPU, lambda: "one row").map(broken, torch.arange(4.0))
    assert attempts == [4]
