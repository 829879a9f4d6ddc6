"""Store URLs: the SQLite file behind a URL, made absolute once, and credentials hidden."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_robust.uris import absolute_sqlite, missing_store, redact, sqlite_file


def test_credentials_of_every_url_in_a_text_are_hidden() -> None:
    text = "tried http://me:secret@mlflow:5000 and postgresql://u:p@db/optuna"
    assert redact(text) == "tried http://***@mlflow:5000 and postgresql://***@db/optuna"


def test_urls_without_credentials_are_left_as_they_are() -> None:
    for url in ("sqlite:////abs/mlflow.db", "http://mlflow:5000", "s3://bucket/key"):
        assert redact(url) == url


def test_the_sqlite_file_of_a_url_leaves_out_its_query_and_in_memory_databases() -> None:
    assert sqlite_file("sqlite:///runs/mlflow.db?timeout=20") == Path("runs/mlflow.db")
    assert sqlite_file("sqlite://") is None and sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("postgresql://db/x") is None


def test_a_relative_sqlite_path_is_made_absolute_and_keeps_its_query(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_sqlite("sqlite:///optuna.db?timeout=5") == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}?timeout=5"
    assert absolute_sqlite("sqlite:////already/abs.db") == "sqlite:////already/abs.db"
    assert absolute_sqlite("postgresql://db/x") == "postgresql://db/x"


def test_a_store_is_missing_only_when_its_sqlite_file_is_not_there(tmp_path: Path) -> None:
    there = tmp_path / "mlflow.db"
    there.write_bytes(b"")
    assert missing_store(f"sqlite:///{there}") is None
    assert missing_store(f"sqlite:///{tmp_path / 'gone.db'}") == tmp_path / "gone.db"
    assert missing_store("http://mlflow:5000") is None
