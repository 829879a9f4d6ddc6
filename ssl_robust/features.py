"""Cached head inputs: the frozen encoder's (cls, tokens) and the target of every image, stored once
and read back in batches for every epoch of head fitting.

Features are stored as float16, integer targets (labels, label maps) as int16. On ``disk`` (the
default) each array is a raw file in a temporary folder, written batch by batch and read with
positional reads (no memory map, whose touched pages would count towards the process's resident
memory), so the memory of head fitting does not grow with the number of training images; ``memory``
keeps the same float16 arrays in RAM.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

Storage = Literal["disk", "memory"]
FEATURE_DTYPE = np.float16


class _Rows:
    """One array of ``n`` rows, appended batch by batch and read at arbitrary row indices."""

    def __init__(self, n: int, row_shape: tuple[int, ...], dtype: np.dtype, path: Path | None) -> None:
        self.n, self.row_shape, self.dtype = n, row_shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.written = 0
        self.path = path
        self._array = np.empty((n, *row_shape), dtype=self.dtype) if path is None else None
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600) if path is not None else None

    def append(self, rows: np.ndarray) -> None:
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"feature rows of shape {rows.shape[1:]} after rows of shape {self.row_shape}: "
                             "every image of a split must give features of one shape")
        if self.written + len(rows) > self.n:
            raise ValueError(f"more than the {self.n} rows announced")
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if self._array is not None:
            self._array[self.written:self.written + len(rows)] = rows
        else:
            os.pwrite(self._fd, rows.tobytes(), self.written * self.row_bytes)
        self.written += len(rows)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices``, in that order (contiguous runs are read with one call each)."""
        if self._array is not None:
            return self._array[indices]
        order = np.argsort(indices, kind="stable")
        ranked = indices[order]
        out = np.empty((len(indices), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(indices), -1).view(np.uint8)
        start = 0
        while start < len(ranked):
            stop = start + 1
            while stop < len(ranked) and ranked[stop] == ranked[stop - 1] + 1:
                stop += 1
            data = os.pread(self._fd, (stop - start) * self.row_bytes, int(ranked[start]) * self.row_bytes)
            flat[order[start:stop]] = np.frombuffer(data, dtype=np.uint8).reshape(stop - start, -1)
            start = stop
        return out

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _compact(name: str, value: torch.Tensor) -> torch.Tensor:
    """float16 features, int16 integer targets; values that do not fit are an error, not a wrap."""
    if name != "target":
        value = value.to(torch.float16)
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"encoder {name} features overflow float16 (|value| > 65504) or are not finite")
        return value
    if value.dtype.is_floating_point or value.dtype == torch.bool:
        return value
    info = torch.iinfo(torch.int16)
    if value.numel() and (int(value.min()) < info.min or int(value.max()) > info.max):
        raise ValueError(f"integer targets beyond int16 ({int(value.min())}..{int(value.max())}) cannot be cached")
    return value.to(torch.int16)


class Features:
    """(cls, tokens, target) of ``n`` images: appended once, then read in (shuffled) batches."""

    names = ("cls", "tokens", "target")

    def __init__(self, n: int, storage: Storage = "disk") -> None:
        if storage not in ("disk", "memory"):
            raise ValueError(f"feature storage must be 'disk' or 'memory', got {storage!r}")
        self.n, self.storage = n, storage
        self.folder = Path(tempfile.mkdtemp(prefix="ssl_robust_features_")) if storage == "disk" else None
        self._rows: dict[str, _Rows] = {}

    def __len__(self) -> int:
        return self.n

    def append(self, cls: torch.Tensor, tokens: torch.Tensor, target: torch.Tensor) -> None:
        """One batch; features must fit float16 and integer targets int16 (else an error)."""
        for name, value in zip(self.names, (cls, tokens, target)):
            array = _compact(name, value.detach().cpu()).numpy()
            if name not in self._rows:
                path = self.folder / f"{name}.bin" if self.folder is not None else None
                self._rows[name] = _Rows(self.n, array.shape[1:], array.dtype, path)
            self._rows[name].append(array)

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(cls, tokens, target) batches; features as float32. ``shuffle`` draws one permutation
        per call from ``generator``."""
        if self.n and (not self._rows or self._rows["cls"].written != self.n):
            raise ValueError(f"features hold {self._rows['cls'].written if self._rows else 0} of {self.n} images")
        order = torch.randperm(self.n, generator=generator).numpy() if shuffle else np.arange(self.n)
        for start in range(0, self.n, batch_size):
            idx = order[start:start + batch_size]
            cls, tokens, target = (torch.from_numpy(self._rows[name].read(idx)) for name in self.names)
            yield cls.float(), tokens.float(), target.long() if target.dtype == torch.int16 else target

    def nbytes(self) -> int:
        return sum(rows.row_bytes * rows.n for rows in self._rows.values())

    def close(self) -> None:
        """Delete the disk cache (memory storage: drop the arrays)."""
        for rows in self._rows.values():
            rows.close()
        self._rows.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Features":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
