"""``ssl-robust run | sweep | deacl | deacl-sweep | search | report | convert | list``: one cell
offline, a sweep on Ray, a DeACL fine-tune, a DeACL sweep or search, a sweep's report, a
checkpoint's encoder as plain timm safetensors, or what configs can name.

The entry point: it parses the command line (``command_line``) and validates the command's config
with the light config models only, so ``--help`` and a bad input answer in about a second; then it
loads the commands (``commands``: torch, Ray, MLflow) and runs one. ``sweeps/*.py`` are thin
wrappers around ``main`` for ``ray submit``. A bad input (config, data root, checkpoint, URI,
option) ends in one line on stderr and exit code 2, before anything is written; ``--debug`` shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from ssl_robust.command_line import COMMANDS, UsageError, build_parser, config_path, sweep_file_and_overrides
from ssl_robust.config import CellCfg
from ssl_robust.config_file import ConfigError, load_config
from ssl_robust.data.safe_pickle import DataFileError
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.errors import ArtifactError, CheckpointError, PreflightError
from ssl_robust.registry import UnknownNameError
from ssl_robust.search_config import load_search
from ssl_robust.sweep_config import DeaclSweepCfg, plan_grid, read_sweep

USER_ERRORS = (ConfigError, UnknownNameError, FileNotFoundError, DataFileError, CheckpointError, ArtifactError,
               UsageError, PreflightError)


def load_configs(args: argparse.Namespace) -> Any:
    """The command's validated config (None for ``report``, ``convert`` and ``list``), its file
    read once: with its overrides, checked to be this command's kind, validated; a sweep as its
    ``Grid`` with every cell expanded and validated. Later steps receive this object, not the path."""
    if args.command in ("report", "convert", "list"):
        return None
    if args.command in ("run", "deacl"):
        path, overrides = config_path(args.config), args.overrides
    else:
        path, overrides = sweep_file_and_overrides(args, args.default_config)
    if args.command == "sweep":
        return plan_grid(read_sweep(path, overrides))
    if args.command == "search":
        return load_search(path, overrides)
    model = {"run": CellCfg, "deacl": DeaclCfg, "deacl-sweep": DeaclSweepCfg}[args.command]
    return load_config(model, path, overrides, args.command)


def _message(err: Exception) -> str:
    """The one line printed for a bad input (a config error: one line per bad field; several
    missing data sets: one line each)."""
    if isinstance(err, ConfigError):
        text = str(err)
        return f"invalid config:\n{text}" if "\n" in text else f"invalid config: {text}"
    if isinstance(err, UsageError):
        return f"error: {err}"
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    return "error: " + "\n  ".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse, check, dispatch; a bad input prints one line (``--debug``: the traceback) and returns 2.
    Without ``--verbose`` Ray, MLflow and the trials log warnings and errors only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv  # either may stand anywhere on the line
    argv = [item for item in argv if item not in ("--debug", "--verbose")]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)  # KEY=VALUE overrides may follow options too
        args.verbose = verbose
        if extra and (not hasattr(args, "overrides") or any("=" not in item for item in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        cfg = load_configs(args)
        if not args.verbose:  # read when MLflow is imported, and by the workers Ray starts from here
            os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        module = importlib.import_module(args.module)  # torch, Ray, MLflow: only once the input is valid
        if args.module == COMMANDS:
            module.prepare(args, cfg)
        return getattr(module, args.handler)(args, cfg)
    except USER_ERRORS as err:
        if debug:
            raise
        print(_message(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
