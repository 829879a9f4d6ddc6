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
from pathlib import Path
from typing import Any

import yaml

from ssl_robust.command_line import COMMANDS, UsageError, build_parser, config_path, sweep_file_and_overrides
from ssl_robust.config import CellCfg, ConfigError, check_config_kind, load_config
from ssl_robust.data.safe_pickle import DataFileError
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.errors import ArtifactError, CheckpointError, PreflightError
from ssl_robust.registry import UnknownNameError
from ssl_robust.search_config import load_search
from ssl_robust.sweep_config import DeaclSweepCfg, expand, read_sweep

USER_ERRORS = (ConfigError, UnknownNameError, FileNotFoundError, DataFileError, CheckpointError, ArtifactError,
               UsageError, PreflightError)


def check_config_file(path: Path, command: str | None = None) -> None:
    """ConfigError for a YAML file that is empty or does not parse (naming its line), or that is
    another command's config (naming that command); a missing file is left to the reader."""
    if not path.is_file():
        return
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = (f" ({err.context} opened at line {err.context_mark.line + 1})"
                   if err.context and err.context_mark and err.problem else "")
        raise ConfigError(f"{where}: invalid YAML: {err.problem or err.context}{context}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from err
    if data is None:
        raise ConfigError(f"{path} is empty")
    if command is not None and isinstance(data, dict):
        check_config_kind(data, command, path)


def load_configs(args: argparse.Namespace) -> Any:
    """The command's validated config (None for ``report``, ``convert`` and ``list``): the file is
    checked (``check_config_file``), read with its overrides and validated, a sweep's every cell too."""
    if args.command in ("report", "convert", "list"):
        return None
    if args.command in ("run", "deacl"):
        path, overrides = config_path(args.config), args.overrides
    else:
        path, overrides = sweep_file_and_overrides(args, args.default_config)
    check_config_file(path, args.command)
    if args.command == "sweep":
        sweep = read_sweep(path, overrides)
        expand(sweep.model_copy(update={"encoders": [e for e in sweep.encoders if e.deacl is None]}))
        return sweep
    if args.command == "search":
        return load_search(path, overrides)
    return load_config({"run": CellCfg, "deacl": DeaclCfg, "deacl-sweep": DeaclSweepCfg}[args.command], path, overrides)


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
