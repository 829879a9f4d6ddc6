"""Pickled data files read as data: a restricted unpickler for numpy arrays and plain containers.

``pickle.load`` calls whatever a file names, so a tampered data file runs code the moment it is
read. ``load`` resolves only the globals that numpy arrays, numpy scalars and Python's containers
need (numpy 1 and 2 spellings, Python 2 and 3 module names) and raises ``ForbiddenGlobalError``
naming any other global before anything is called.
"""
from __future__ import annotations

import builtins
import codecs
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class DataFileError(ValueError):
    """A data file that cannot be used as it is (does not parse, wrong checksum, bad values);
    the message names the file."""


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle that names a global outside the allowed data types (it could run code)."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only, no other codec."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise ForbiddenGlobalError(f"_codecs.encode with encoding {encoding!r} is not allowed in a data file")
    return text.encode("latin-1", errors)


_BUILTINS = {name: getattr(builtins, name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float", "complex", "bool")}

ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    **{(module, name): obj for module in ("builtins", "__builtin__") for name, obj in _BUILTINS.items()},
    ("__builtin__", "unicode"): str,
    ("__builtin__", "long"): int,
    **{(f"numpy.{core}.multiarray", name): getattr(_multiarray, name)
       for core in ("core", "_core") for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _numeric._frombuffer for core in ("core", "_core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``ALLOWED`` globals; anything else raises ``ForbiddenGlobalError``."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(
                f"global {module}.{name} is not allowed in a data file (only numpy arrays, numbers, "
                "strings, bytes and containers): refusing to unpickle it") from None


def load(file: BinaryIO, encoding: str = "latin1") -> Any:
    """``pickle.load`` restricted to data (``encoding`` as for Python 2 pickles)."""
    return RestrictedUnpickler(file, encoding=encoding).load()


def loads(data: bytes, encoding: str = "latin1") -> Any:
    """``pickle.loads`` restricted to data."""
    return load(io.BytesIO(data), encoding=encoding)


def load_path(path: str | Path, encoding: str = "latin1") -> Any:
    """The object pickled in ``path``, restricted to data."""
    with open(path, "rb") as file:
        return load(file, encoding=encoding)
