"""What the ``ssl-robust`` commands do once the command line is parsed (``ssl_robust.commands``):
``prepare`` makes a sweep's relative storage path absolute and leaves a URI as it is.

The commands' behaviour end to end, bad inputs included, is in tests/test_cli.py and tests/test_errors.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from ssl_robust import cli, commands
from ssl_robust.command_line import build_parser
from tests.helpers import tiny_sweep, write_sweep


def test_relative_storage_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sweep = str(write_sweep(tmp_path / "sweep.yaml", tiny_sweep("errors")))
    args = build_parser().parse_args(["sweep", sweep, "--storage-path", "results", "--dry-run"])
    commands.prepare(args, cli.load_configs(args))
    assert args.storage_path == str(tmp_path / "results")
    args = build_parser().parse_args(["sweep", sweep, "--storage-path", "s3://bucket/ray", "--dry-run"])
    commands.prepare(args, cli.load_configs(args))
    assert args.storage_path == "s3://bucket/ray"
