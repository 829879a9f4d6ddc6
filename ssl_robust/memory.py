"""Work that adapts to accelerator memory: a batch that runs out of memory is split in halves and
retried, down to one item, and only one item that does not fit is an error.

Splitting changes no result where each item's result depends on that item alone (the attack
engines seed each sample's random start by its id), so the batch size used is a setting of the
run, not of the result.
"""
from __future__ import annotations

import gc
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


class DoesNotFit(RuntimeError):
    """One item alone runs out of accelerator memory."""


def device_memory(device: torch.device) -> str:
    """The device and its memory, for messages: ``cuda:0 (NVIDIA A10G, 22.1 GiB)``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{device} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    return str(device)


def free(device: torch.device) -> None:
    """Give what an out-of-memory attempt held back to the device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class AdaptiveBatch:
    """A batch size that halves when a batch runs out of accelerator memory and stays halved for
    the batches after it. ``what()`` names one item (image size, model) in the error raised when
    a single item does not fit."""

    def __init__(self, size: int | None, device: torch.device, what: Callable[[], str]) -> None:
        self.size = None if size is None else max(1, size)  # None: whole batches until one does not fit
        self.device, self.what = device, what

    def run(self, n: int, work: Callable[[slice], T], done: Callable[[T], None]) -> None:
        """Run ``work`` on consecutive slices of ``n`` items, at most ``size`` each, and hand each
        result to ``done`` in order; a slice that runs out of memory is halved and retried, and
        ``done`` sees only finished slices, so nothing is counted twice."""
        start = 0
        while start < n:
            stop = n if self.size is None else min(start + self.size, n)
            result = self._attempt(work, slice(start, stop))
            if result is _OUT_OF_MEMORY:
                self.size = (stop - start) // 2
                free(self.device)
                continue
            done(result)
            start = stop

    def map(self, fn: Callable[[torch.Tensor], T], x: torch.Tensor) -> list[T]:
        """``fn`` over the rows of ``x`` in slices, as ``run`` does; the slices' results in order."""
        results: list[T] = []
        self.run(len(x), lambda rows: fn(x[rows]), results.append)
        return results

    def _attempt(self, work: Callable[[slice], T], rows: slice) -> T | object:
        try:
            return work(rows)
        except torch.OutOfMemoryError:
            if rows.stop - rows.start == 1:
                raise DoesNotFit(f"{self.what()} does not fit in the memory of {device_memory(self.device)} even "
                                 "alone: use a smaller input size or model, bf16 precision, or a device with "
                                 "more memory") from None
            return _OUT_OF_MEMORY


_OUT_OF_MEMORY = object()
