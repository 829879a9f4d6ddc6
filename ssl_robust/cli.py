"""``ssl-robust run | sweep | deacl | deacl-sweep | search | report | convert``: one cell offline, a
sweep on Ray, a DeACL fine-tune, a DeACL sweep or search, a sweep's report, or a checkpoint's
encoder as plain timm safetensors.

The one argument parser of the project; ``sweeps/*.py`` are thin wrappers around it for
``ray submit``. URIs in a config (``s3://``, ``runs:/``) are resolved to local files here.
A bad input (config, data root, checkpoint, URI, option) ends in one line on stderr and exit
code 2, before anything is written; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
from pathlib import Path

import yaml

from ssl_robust import cost, names, plan_lines, tracking
from ssl_robust.cell import run_cell
from ssl_robust.config import CellCfg, ConfigError, check_config_kind, load_config, parse_budget
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.data import preflight
from ssl_robust.data.safe_pickle import DataFileError
from ssl_robust.devices import resolve_device
from ssl_robust.encoders import CheckpointError, check_encoder_name, convert_checkpoint
from ssl_robust.finetune import run_deacl
from ssl_robust.registry import UnknownNameError
from ssl_robust.report import write_report
from ssl_robust.report.fetch import report_inputs
from ssl_robust.search_config import describe_space, load_search
from ssl_robust.sweep_config import DeaclSweepCfg, deacl_configs, expand, read_sweep, resolve_encoders
from ssl_robust.tracking.artifacts import ArtifactError
from ssl_robust.tracking.preflight import redact
from ssl_robust.tracking.deacl import checkpoint_artifact
from ssl_robust.tune.search import masked, run_search
from ssl_robust.tune import deacl_sweep, grid

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEACL_SWEEP = "sweeps/deacl.yaml"
SUBMIT_ENV = "SSL_ROBUST_SUBMIT"  # set on cluster nodes: the `ray submit ... --` prefix that reruns a sweep


def config_path(path: str) -> Path:
    """The path as given, else relative to the source tree (``ray submit`` runs from $HOME)."""
    given = Path(path).expanduser()
    beside = REPO_ROOT / path
    return beside if not given.exists() and not given.is_absolute() and beside.exists() else given


def print_table(metrics: dict[str, float]) -> None:
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        print(f"{key:<{width}}  {metrics[key]:.4f}")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(CellCfg, config_path(args.config), args.overrides)
    check_encoder_name(cfg.encoder.name)
    print(f"cell {cfg.cell_id}: {cfg.encoder.name} / {cfg.data.name} ({cfg.data.resolved_task}) / "
          f"{cfg.attack.name} eps={cfg.attack.eps:.5f} steps={cfg.attack.steps}")
    print_table(run_cell(tracking.localize(cfg, args.tracking_uri), out_dir=args.out_dir))
    return 0


def _write_report(experiment: str, tracking_uri: str | None, out_dir: Path, eps: float | None = None,
                  cell_ids: set[str] | None = None, searches: list[str] | tuple[str, ...] = ()) -> int:
    """The report of the experiment's FINISHED cells (with their per-sample artifacts, its DeACL runs
    and the Pareto front of any search among them or in ``searches``' experiments); with
    ``cell_ids`` (a sweep's own), of those cells only."""
    rows = tracking.run_results(experiment, tracking_uri=tracking_uri)
    if cell_ids is not None:
        rows = [row for row in rows if row.get("cell_id") in cell_ids]
    if not rows:
        print(f"no finished cells in experiment {experiment!r}" + (" among the sweep's" if cell_ids else "")
              + ("" if cell_ids is not None else _other_experiments(experiment, tracking_uri)), file=sys.stderr)
        return 2
    inputs = report_inputs(experiment, tracking_uri, rows, searches)
    page = write_report(rows, out_dir, eps=eps, title=f"ssl_robust: {experiment}", **inputs)
    print(f"report ({len(rows)} cells): {page}", file=sys.stderr)
    return 0


def _other_experiments(experiment: str, tracking_uri: str | None) -> str:
    """``; did you mean ...? experiments here: ...`` for a report of an experiment without cells."""
    names = [name for name in tracking.experiment_names(tracking_uri) if name != experiment]
    if not names:
        return "; the tracking store has no other experiment"
    near = difflib.get_close_matches(experiment, names, n=3, cutoff=0.6)
    return (f"; did you mean {' or '.join(map(repr, near))}?" if near else "") + f" experiments here: {', '.join(names)}"


def _sweep_file_and_overrides(args: argparse.Namespace, default: str = "sweeps/full_benchmark.yaml"
                              ) -> tuple[Path, list[str]]:
    """``[CONFIG] [KEY=VALUE ...]`` or ``--config CONFIG [KEY=VALUE ...]``."""
    files = [item for item in args.overrides if "=" not in item]
    overrides = [item for item in args.overrides if "=" in item]
    if len(files) + (args.config is not None) > 1:
        raise ConfigError(f"one sweep config expected, got {files + [args.config] if args.config else files}")
    path = args.config or (files[0] if files else default)
    return config_path(path), overrides + ([f"name={args.experiment}"] if args.experiment else [])


def cmd_sweep(args: argparse.Namespace) -> int:
    sweep = read_sweep(*_sweep_file_and_overrides(args))
    cells = expand(resolve_encoders(sweep, lambda source: tracking.deacl_students(
        source.runs, source.experiment, source.epochs, args.tracking_uri)))
    for name in sorted({c.encoder.name for c in cells}):
        check_encoder_name(name)
    print(f"sweep {sweep.name}: {len(cells)} cells, {len(grid.head_groups(cells))} heads", file=sys.stderr)
    if args.dry_run:
        for cell in cells:
            print(cell.cell_id, cell.head_id, cell.encoder.name, cell.data.name, cell.data.resolved_task,
                  cell.attack.name, f"{cell.attack.eps * 255:.3g}/255", f"steps={cell.attack.steps}",
                  plan_lines.attack_settings(cell), cost.describe(cost.cell_cost(cell)))
        print("\n".join(plan_lines.head_line(cell) for cell in grid.head_groups(cells).values()))
        print("\n".join(cost.summary(cells, args.throughput)))
        return 0
    report = grid.execute(sweep, cells, args.tracking_uri, args.address, args.num_cpus, args.storage_path,
                          args.resource_timeout)
    summary = report.lines()
    print("\n".join(summary))
    out_dir = Path(args.report.format(name=sweep.name))
    written = False
    if not args.no_report and not report.interrupted:
        written = _write_report(sweep.name, args.tracking_uri, out_dir, cell_ids={c.cell_id for c in cells}) == 0
    if report.ran:
        run_id = tracking.log_sweep_run(sweep.name, report.session, summary, out_dir if written else None,
                                        report.ok, args.tracking_uri)
        print(f"summary{' and report' if written else ''} tracked as MLflow run {run_id} "
              f"(artifacts {tracking.SUMMARY_ARTIFACT}{', ' + tracking.REPORT_ARTIFACT + '/' if written else ''})",
              file=sys.stderr)
    print("\n".join(where_it_went(out_dir if written else None, tracking.absolute_tracking_uri(args.tracking_uri),
                                   (args.storage_path or "~/ray_results") if report.ran else None)), file=sys.stderr)
    return _sweep_exit(report.ok, report.interrupted)


def where_it_went(report_dir: Path | None, tracking_uri: str, storage_path: str | None) -> list[str]:
    """Where a sweep's results are, each with the command that opens it (credentials masked)."""
    tracking_uri = redact(tracking_uri)
    lines = [f"report:      {report_dir.resolve() / 'index.html'}  (open it in a browser)"] if report_dir else []
    ui = (f"mlflow ui --backend-store-uri {tracking_uri} --port 5000" if tracking_uri.startswith("sqlite:")
          else f"open {tracking_uri}")
    lines.append(f"tracking:    {tracking_uri}  ({ui})")
    if storage_path is not None:
        lines.append(f"Ray results: {storage_path}  (tensorboard --logdir {storage_path})")
    return lines


def resume_command() -> str:
    """The command that reruns this sweep: on a cluster node set up by ``infra/cluster*.yaml``, the
    ``ray submit`` the user typed on their own machine (``SSL_ROBUST_SUBMIT`` is its prefix);
    else this process's own command line."""
    prefix = os.environ.get(SUBMIT_ENV)
    if prefix:
        return f"{prefix} {shlex.join(sys.argv[1:])}"
    return shlex.join(sys.orig_argv)


def _sweep_exit(ok: bool, signum: int) -> int:
    """0 when every cell FINISHED, 1 when some did not, 128 + signum when a signal stopped the sweep.
    Through ``ray submit`` the user sees 1 for any failure (Ray's own exit code), so the code is
    also printed."""
    code = 128 + signum if signum else (0 if ok else 1)
    if code:
        print(f"to resume: {resume_command()}", file=sys.stderr)
        if os.environ.get(SUBMIT_ENV):
            print(f"exit code {code} (ray submit reports any failure as 1)", file=sys.stderr)
    return code


def cmd_list(args: argparse.Namespace) -> int:
    """One line per name that configs accept."""
    for what in [args.what] if args.what else list(names.LISTS):
        if not args.what:
            print(f"{what}:")
        print("\n".join(("  " if not args.what else "") + line for line in names.LISTS[what]()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    try:
        eps = parse_budget(args.eps) if args.eps is not None else None
    except ValueError as err:
        raise ConfigError(f"--eps: {err}") from err
    return _write_report(args.experiment, args.tracking_uri, Path(args.out), eps, searches=args.search)


def cmd_deacl(args: argparse.Namespace) -> int:
    cfg = load_config(DeaclCfg, config_path(args.config), args.overrides)
    print(f"deacl {cfg.deacl_id}: {cfg.encoder.name} on {cfg.data.name}, gamma={cfg.gamma}, "
          f"dense_weight={cfg.dense_weight}, eps={cfg.attack.eps:.5f}, {cfg.epochs} epochs", file=sys.stderr)
    run_id, metrics = run_deacl(cfg, args.tracking_uri, args.experiment)
    if not metrics:
        print(f"already finished: run {run_id}", file=sys.stderr)
    else:
        print_table(metrics)
    last = cfg.epochs
    print(f"run {run_id}; checkpoints: runs:/{run_id}/{checkpoint_artifact(last)} (and every "
          f"{cfg.checkpoint_every} epochs)")
    return 0


def cmd_deacl_sweep(args: argparse.Namespace) -> int:
    path, overrides = _sweep_file_and_overrides(args, DEFAULT_DEACL_SWEEP)
    sweep = load_config(DeaclSweepCfg, path, overrides)
    configs = deacl_configs(sweep)
    for name in sorted({c.encoder.name for c in configs}):
        check_encoder_name(name)
    print(f"deacl sweep {sweep.name}: {len(configs)} fine-tunes x epochs {sweep.benchmark.epochs}", file=sys.stderr)
    if args.dry_run:
        for cfg in configs:
            print(cfg.deacl_id, cfg.encoder.name, cfg.data.name, f"gamma={cfg.gamma}",
                  f"dense_weight={cfg.dense_weight}", f"eps={cfg.attack.eps * 255:.3g}/255",
                  f"attack_steps={cfg.attack.steps}",
                  f"step_size={cfg.attack.step_size * 255:.3g}/255", f"{cfg.optimizer} lr={cfg.lr}",
                  f"momentum={cfg.momentum}", f"weight_decay={cfg.weight_decay}",
                  f"batch={cfg.batch_size}x{cfg.grad_accum}",
                  f"warmup={cfg.warmup_epochs:g} from {cfg.warmup_start_lr} per {cfg.warmup_unit}",
                  f"augment={cfg.augment}", f"precision={cfg.precision}", f"val_fraction={cfg.val_fraction}",
                  f"epochs={cfg.epochs}")
        return 0
    report = deacl_sweep.run_deacl_sweep(sweep, args.tracking_uri, args.address, args.num_cpus, args.storage_path,
                                         args.resource_timeout)
    print("\n".join(report.lines()))
    if not args.no_report and report.benchmark is not None and not report.signum:
        _write_report(sweep.name, args.tracking_uri, Path(args.report.format(name=sweep.name)),
                      cell_ids=report.cell_ids)
    return _sweep_exit(report.ok, report.signum)


def cmd_search(args: argparse.Namespace) -> int:
    search = load_search(*_sweep_file_and_overrides(args, "sweeps/deacl_search.yaml"))
    check_encoder_name(search.deacl.encoder.name)
    print(f"search {search.name}: {search.n_trials} trials of {search.deacl.epochs} epochs, "
          f"{search.deacl.encoder.name} on {search.deacl.data.name}; study {masked(search.storage_url)}",
          file=sys.stderr)
    if args.dry_run:
        print("\n".join(describe_space(search)))
        return 0
    report = run_search(search, args.tracking_uri, args.storage_path, args.address, args.num_cpus)
    print("\n".join(report.lines()))
    return 1 if report.failed or report.front.empty else 0


def cmd_convert(args: argparse.Namespace) -> int:
    if args.encoder:
        check_encoder_name(args.encoder)
    source = tracking.local_path(args.checkpoint, tracking_uri=args.tracking_uri)
    prefix, count = convert_checkpoint(source, args.out, args.key, args.encoder)
    how = "given" if args.key is not None else "found"
    print(f"prefix {prefix!r} ({how}): {count} tensors written to {args.out}")
    print(f"checked: it loads into {args.encoder}" if args.encoder
          else "not checked against an encoder (--encoder NAME checks that it loads)")
    return 0


def _safetensors_path(value: str) -> Path:
    if not value.endswith(".safetensors"):
        raise argparse.ArgumentTypeError(f"{value!r}: the output must be a .safetensors file")
    return Path(value).expanduser()


def _tracking_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")


def _resource_timeout_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resource-timeout", type=float, default=grid.RESOURCE_TIMEOUT_S, metavar="SECONDS",
                        help="on a joined Ray cluster, how long to wait for the autoscaler to provide one "
                             "trial's resources (default %(default)s)")


def _ray_sweep_options(parser: argparse.ArgumentParser, default_config: str, with_report: bool = True) -> None:
    parser.set_defaults(default_config=default_config)
    parser.add_argument("overrides", nargs="*", metavar="[CONFIG] [KEY=VALUE ...]",
                        help=f"sweep YAML (default {default_config}) and dotted overrides, e.g. defaults.seed=1")
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
    parser.add_argument("--throughput", type=_throughput, default=None, metavar="GFLOPS|JSON",
                        help="with --dry-run: sustained GFLOP/s, or a benchmarks/attack_throughput.py --json "
                             "file, to print the grid's hours")
    parser.add_argument("--report", default="dashboards/{name}",
                        help="folder for the report of the finished cells ({name} = the sweep's name)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")


def _throughput(value: str) -> float:
    try:
        return cost.read_throughput(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


class UsageError(Exception):
    """A command line the parser rejects."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting, so ``main`` returns 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} -h)")


def _budget_option(value: str) -> float:
    try:
        return parse_budget(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ssl-robust", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback (any position)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one cell offline and print its metrics")
    run.add_argument("config", help="cell YAML (see configs/)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. attack.eps=4/255 data.task=depth")
    run.add_argument("--out-dir", default=None, help="write per-sample results and example images here")
    _tracking_option(run)
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="run a benchmark sweep on Ray Tune, tracked in MLflow")
    _ray_sweep_options(sweep, "sweeps/full_benchmark.yaml")
    sweep.set_defaults(func=cmd_sweep)
    _resource_timeout_option(sweep)

    sweep_deacl = sub.add_parser("deacl-sweep", help="DeACL fine-tunes over a grid, then the benchmark of "
                                                     "their checkpoints, on Ray Tune")
    _ray_sweep_options(sweep_deacl, DEFAULT_DEACL_SWEEP)
    sweep_deacl.set_defaults(func=cmd_deacl_sweep)
    _resource_timeout_option(sweep_deacl)

    deacl = sub.add_parser("deacl", help="DeACL robust fine-tuning of an encoder, tracked in MLflow (resumable)")
    deacl.add_argument("config", help="DeACL YAML (see configs/deacl_tiny.yaml)")
    deacl.add_argument("overrides", nargs="*", help="dotted overrides, e.g. gamma=1 attack.eps=4/255")
    deacl.add_argument("--experiment", default=None, help="MLflow experiment (default: the config's name)")
    _tracking_option(deacl)
    deacl.set_defaults(func=cmd_deacl)

    search = sub.add_parser("search", help="Optuna search of DeACL hyperparameters on Ray Tune (Pareto front "
                                           "of clean vs robust probe accuracy), tracked in MLflow")
    _ray_sweep_options(search, "sweeps/deacl_search.yaml", with_report=False)
    search.set_defaults(func=cmd_search)

    report = sub.add_parser("report", help="poster tables and robustness plots from a sweep's MLflow runs")
    report.add_argument("experiment", help="the sweep's MLflow experiment (its `name`)")
    report.add_argument("--out", default="dashboards/out", help="folder for index.html, tables and plots")
    report.add_argument("--eps", default=None, type=_budget_option,
                        help="eps of the tables, e.g. 8/255 (default 8/255 or the largest)")
    report.add_argument("--search", action="append", default=[], metavar="EXPERIMENT",
                        help="also plot the Pareto front of the DeACL search(es) in this experiment (repeatable)")
    _tracking_option(report)
    report.set_defaults(func=cmd_report)

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
    convert.set_defaults(func=cmd_convert)

    listing = sub.add_parser("list", help="what can be named: encoders, data sets, attacks, tasks")
    listing.add_argument("what", nargs="?", choices=sorted(names.LISTS), default=None, help="one of them (default: all)")
    listing.set_defaults(func=cmd_list)
    return parser


USER_ERRORS = (ConfigError, UnknownNameError, FileNotFoundError, DataFileError, CheckpointError, ArtifactError,
               UsageError, tracking.PreflightError)


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


def _check_store(args: argparse.Namespace) -> None:
    """``report`` reads a store: a SQLite file that is not there would be created empty by MLflow."""
    uri = tracking.absolute_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow tracking store at {uri.removeprefix('sqlite:///')}, so no experiment "
                                f"{args.experiment!r}; give the sweep's store with --tracking-uri or MLFLOW_TRACKING_URI")


def prepare(args: argparse.Namespace) -> None:
    """Checks before a command starts anything: config files, a relative ``--storage-path`` (made
    absolute: trials run elsewhere), the device of a local run, and every data set a command reads."""
    storage = getattr(args, "storage_path", None)
    if storage and "://" not in storage:
        args.storage_path = str(Path(storage).expanduser().resolve())
    for key, value in tracking.fail_fast_env().items():  # MLflow's client gives up in ~30 s, not ~4 min
        os.environ.setdefault(key, value)
    if args.command in ("convert", "list"):  # one file (a URI fails with its own message), or nothing
        return
    tracking.preflight(args.tracking_uri, need_s3=False if args.command == "report" else None)
    if args.command == "report":
        _check_store(args)
        return
    if args.command in ("run", "deacl"):
        path, overrides = config_path(args.config), args.overrides
    else:
        path, overrides = _sweep_file_and_overrides(args, args.default_config)
    check_config_file(path, args.command)
    if args.command == "run":
        resolve_device(load_config(CellCfg, path, overrides).device)
    elif args.command == "deacl":
        cfg = load_config(DeaclCfg, path, overrides)
        resolve_device(cfg.device)
        preflight.check_available([preflight.deacl_data(cfg)])
    elif not args.dry_run:
        preflight.check_available(_grid_data(args.command, path, overrides))


def _grid_data(command: str, path: Path, overrides: list[str]) -> list:
    """The data configs of a sweep, DeACL sweep or search file."""
    if command == "sweep":
        return preflight.sweep_data(read_sweep(path, overrides))
    if command == "deacl-sweep":
        return preflight.deacl_sweep_data(load_config(DeaclSweepCfg, path, overrides))
    return [preflight.deacl_data(load_search(path, overrides).deacl)]


def _message(err: Exception) -> str:
    """The one line (a config error: one line per bad field) printed for a bad input."""
    if isinstance(err, ConfigError):
        text = str(err)
        return f"invalid config:\n{text}" if "\n" in text else f"invalid config: {text}"
    if isinstance(err, UsageError):
        return f"error: {err}"
    return "error: " + " ".join(str(err).split())


def main(argv: list[str] | None = None) -> int:
    """Parse, check, dispatch; a bad input prints one line (``--debug``: the traceback) and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [item for item in argv if item != "--debug"]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)  # KEY=VALUE overrides may follow options too
        if extra and (not hasattr(args, "overrides") or any("=" not in item for item in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:
            args.overrides = [*args.overrides, *extra]
        prepare(args)
        return args.func(args)
    except USER_ERRORS as err:
        if debug:
            raise
        print(_message(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
