"""The command line of ``ssl-robust``: its parser and where its config files are found.

Light on purpose, like the config models it hands over to: ``ssl-robust --help`` and a bad option
or config answer without loading torch, Ray or MLflow.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ssl_robust.config import parse_budget
from ssl_robust.config_file import ConfigError
from ssl_robust.tune import RESOURCE_TIMEOUT_S

DESCRIPTION = ("ssl-robust run | sweep | deacl | deacl-sweep | search | report | convert | list: one cell "
               "offline, a sweep on Ray, a DeACL fine-tune, a DeACL sweep or search, a sweep's report, a "
               "checkpoint's encoder as plain timm safetensors, or what configs can name.")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEACL_SWEEP = "sweeps/deacl.yaml"
LIST_KINDS = ["attacks", "datasets", "encoders", "tasks"]  # ``ssl-robust list``: names.LISTS
COMMANDS = "ssl_robust.commands"  # where the commands live; ``list`` lives in ``ssl_robust.names``
MEMORY_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
                "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def config_path(path: str) -> Path:
    """The path as given, else relative to the source tree (``ray submit`` runs from $HOME)."""
    given = Path(path).expanduser()
    beside = REPO_ROOT / path
    return beside if not given.exists() and not given.is_absolute() and beside.exists() else given


def sweep_file_and_overrides(args: argparse.Namespace, default: str = "sweeps/full_benchmark.yaml"
                              ) -> tuple[Path, list[str]]:
    """``[CONFIG] [KEY=VALUE ...]`` or ``--config CONFIG [KEY=VALUE ...]``."""
    files = [item for item in args.overrides if "=" not in item]
    overrides = [item for item in args.overrides if "=" in item]
    if len(files) + (args.config is not None) > 1:
        raise ConfigError(f"one sweep config expected, got {files + [args.config] if args.config else files}")
    path = args.config or (files[0] if files else default)
    return config_path(path), overrides + ([f"name={args.experiment}"] if args.experiment else [])


def _safetensors_path(value: str) -> Path:
    if not value.endswith(".safetensors"):
        raise argparse.ArgumentTypeError(f"{value!r}: the output must be a .safetensors file")
    return Path(value).expanduser()


def _tracking_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")


def _resource_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resource-timeout", type=float, default=RESOURCE_TIMEOUT_S, metavar="SECONDS",
                        help="on a joined Ray cluster, how long to wait for the autoscaler to provide one "
                             "trial's resources (default %(default)s)")


def _ray_sweep_options(parser: argparse.ArgumentParser, default_config: str, example: str,
                       with_report: bool = True) -> None:
    parser.set_defaults(default_config=default_config)
    parser.add_argument("overrides", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]",
                        help=f"the YAML (default {default_config}) and dotted overrides, e.g. {example}")
    parser.add_argument("--config", default=None, help="the sweep YAML, as an option (`ray submit ... -- --config`)")
    _tracking_option(parser)
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep's name)")
    parser.add_argument("--address", default=None,
                        help="Ray address: none joins a running cluster or starts one; 'local' starts one")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a Ray instance started here")
    parser.add_argument("--storage-path", default=None, help="Ray Tune results folder or URI")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the grid, run nothing")
    if not with_report:
        return
    parser.add_argument("--throughput", default=None, metavar="GFLOPS|JSON",
                        help="with --dry-run: sustained GFLOP/s, or a benchmarks/attack_throughput.py --json "
                             "file, to print the grid's hours")
    parser.add_argument("--report", default="dashboards/{name}",
                        help="folder for the report of the finished cells ({name} = the sweep's name)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")


class UsageError(Exception):
    """A command line the parser rejects."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting, so ``main`` returns 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} -h)")


def parse_memory(value: str) -> int:
    """``--gpu-memory``: bytes from ``24GiB``, ``24GB``, ``80 GiB``, ``1.5TiB`` or plain bytes; a
    ValueError for anything else (argparse names the flag)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in MEMORY_UNITS or (not unit and "." in match.group(1)):
        raise ValueError(f"expected a size such as 24GiB, 24GB, 80GiB or a number of bytes, got {value!r}")
    size = int(float(match.group(1)) * MEMORY_UNITS[unit])
    if size < 1:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def _memory_option(value: str) -> int:
    try:
        return parse_memory(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _budget_option(value: str) -> float:
    try:
        return parse_budget(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssl-robust", description=DESCRIPTION)
    parser.set_defaults(module=COMMANDS)
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback (any position)")
    parser.add_argument("--verbose", action="store_true",
                        help="show what Ray, MLflow and the trials log: info messages, the trials' progress "
                             "bars (any position)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_run_parser, _sweep_parser, _deacl_sweep_parser, _deacl_parser, _search_parser, _report_parser,
                _convert_parser, _list_parser):
        add(sub)
    return parser


def _run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run one cell offline and print its metrics")
    run.add_argument("config", help="cell YAML (see configs/)")
    run.add_argument("overrides", nargs="*",
                     help="dotted overrides, e.g. attack.eps=4/255 data.task=depth attack.name=depthpgd")
    run.add_argument("--out-dir", default=None, help="write per-sample results and example images here")
    _tracking_option(run)
    run.set_defaults(handler="cmd_run")


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="run a benchmark sweep on Ray Tune, tracked in MLflow")
    _ray_sweep_options(sweep, "sweeps/full_benchmark.yaml", "defaults.seed=1")
    sweep.set_defaults(handler="cmd_sweep")
    sweep.add_argument("--gpu-memory", type=_memory_option, default=None, metavar="SIZE",
                       help="with --dry-run: the memory of one GPU (24GiB, 24GB, bytes): print each cell's "
                            "estimated peak and the largest batch that fits its trial's share (resources.gpu)")
    _resource_timeout_option(sweep)


def _deacl_sweep_parser(sub: argparse._SubParsersAction) -> None:
    sweep_deacl = sub.add_parser("deacl-sweep", help="DeACL fine-tunes over a grid, then the benchmark of "
                                                     "their checkpoints, on Ray Tune")
    _ray_sweep_options(sweep_deacl, DEFAULT_DEACL_SWEEP, "deacl.lr=0.1")
    sweep_deacl.set_defaults(handler="cmd_deacl_sweep")
    _resource_timeout_option(sweep_deacl)


def _deacl_parser(sub: argparse._SubParsersAction) -> None:
    deacl = sub.add_parser("deacl", help="DeACL robust fine-tuning of an encoder, tracked in MLflow (resumable)")
    deacl.add_argument("config", help="DeACL YAML (see configs/deacl_tiny.yaml)")
    deacl.add_argument("overrides", nargs="*", help="dotted overrides, e.g. gamma=1 attack.eps=4/255")
    deacl.add_argument("--experiment", default=None, help="MLflow experiment (default: the config's name)")
    _tracking_option(deacl)
    deacl.set_defaults(handler="cmd_deacl")


def _search_parser(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser("search", help="Optuna search of DeACL hyperparameters on Ray Tune (Pareto front "
                                           "of clean vs robust probe accuracy), tracked in MLflow")
    _ray_sweep_options(search, "sweeps/deacl_search.yaml", "n_trials=8", with_report=False)
    search.set_defaults(handler="cmd_search")


def _report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="poster tables and robustness plots from a sweep's MLflow runs")
    report.add_argument("experiment", help="the sweep's MLflow experiment (its `name`)")
    report.add_argument("--out", default="dashboards/out", help="folder for index.html, tables and plots")
    report.add_argument("--eps", default=None, type=_budget_option,
                        help="eps of the tables, e.g. 8/255 (default 8/255 or the largest)")
    report.add_argument("--search", action="append", default=[], metavar="EXPERIMENT",
                        help="also plot the Pareto front of the DeACL search(es) in this experiment (repeatable)")
    _tracking_option(report)
    report.set_defaults(handler="cmd_report")


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="write the encoder of a checkpoint (a Lightning .ckpt too) once as "
                                             "plain timm safetensors")
    convert.add_argument("checkpoint", metavar="CKPT", help="the checkpoint: a path, file://, s3://... or runs:/...")
    convert.add_argument("out", metavar="OUT.safetensors", type=_safetensors_path, help="the file to write")
    convert.add_argument("--key", default=None, metavar="PREFIX",
                         help="prefix of the encoder's keys, e.g. backbone.encoder. (default: found)")
    convert.add_argument("--encoder", default=None, metavar="NAME",
                         help="alias or timm name: find the prefix from its keys and check that the file loads "
                              "into it (default: found from ViT key names, not checked)")
    _tracking_option(convert)
    convert.set_defaults(handler="cmd_convert")


def _list_parser(sub: argparse._SubParsersAction) -> None:
    listing = sub.add_parser("list", help="what can be named: encoders, data sets, attacks, tasks")
    listing.add_argument("what", nargs="?", choices=LIST_KINDS, default=None, help="one of them (default: all)")
    listing.set_defaults(handler="cmd_list", module="ssl_robust.names")
