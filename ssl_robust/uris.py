"""Tracking and study URIs: the SQLite file behind a ``sqlite:///`` URL and credentials kept out of
what is printed, logged or tagged, written once for MLflow's and Optuna's stores alike."""
from __future__ import annotations

import re
from pathlib import Path

SQLITE = "sqlite:///"


def redact(text: str) -> str:
    """``text`` with the user info of any URL in it (``//user:secret@``) hidden as ``//***@``."""
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (its query left out); None for another scheme or
    an in-memory database."""
    if not url.startswith(SQLITE):
        return None
    raw = url.removeprefix(SQLITE).split("?")[0]
    return None if raw in ("", ":memory:") else Path(raw)


def absolute_sqlite(url: str) -> str:
    """A ``sqlite:///`` URL with its relative path made absolute (it then means the same from any
    working directory); any other URL as it is."""
    path = sqlite_file(url)
    if path is None or path.is_absolute():
        return url
    query = url.partition("?")[2]
    return f"{SQLITE}{path.expanduser().resolve()}" + (f"?{query}" if query else "")


def missing_store(url: str) -> Path | None:
    """The SQLite file a store URL names when it does not exist (a reader would create it empty);
    None when it exists or the store is not a SQLite file."""
    path = sqlite_file(url)
    return path if path is not None and not path.is_file() else None
