"""What each ``ssl-robust`` command does, once ``cli`` has parsed its command line and validated its
config: the checks that need the tracking store, the devices and the data, then the work. Each
``cmd_*`` takes the parsed arguments and the validated config (None for a command without one) and
returns the exit code.
"""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ssl_robust import cost, memory_plan, plan_lines, tracking
from ssl_robust.cell import run_cell
from ssl_robust.command_line import UsageError
from ssl_robust.config import CellCfg, EncoderCfg
from ssl_robust.config_file import ConfigError
from ssl_robust.data import preflight
from ssl_robust.devices import resolve_device
from ssl_robust.encoders import ResolvedEncoders, convert_checkpoint, resolve_encoder
from ssl_robust.finetune import run_deacl
from ssl_robust.report import write_report
from ssl_robust.report.fetch import report_inputs
from ssl_robust.search_config import describe_space
from ssl_robust.deacl_config import deacl_data
from ssl_robust.sweep_config import Grid, deacl_configs, deacl_sweep_data, expand, grid_data, with_students
from ssl_robust.deacl_names import student_artifact
from ssl_robust.tune import deacl_sweep, grid
from ssl_robust.tune.search import run_search
from ssl_robust.uris import missing_store, redact

SUBMIT_ENV = "SSL_ROBUST_SUBMIT"  # set on cluster nodes: the `ray submit ... --` prefix that reruns a sweep


def print_table(metrics: dict[str, float]) -> None:
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        print(f"{key:<{width}}  {metrics[key]:.4f}")


def cmd_run(args: argparse.Namespace, cfg: Any) -> int:
    resolved = resolve_encoder(cfg.encoder)
    print(f"cell {cfg.cell_id}: {cfg.encoder.name} / {cfg.data.name} ({cfg.data.resolved_task}) / "
          f"{cfg.attack.name} eps={cfg.attack.eps:.5f} steps={cfg.attack.steps}")
    print_table(run_cell(tracking.localize(cfg, args.tracking_uri), args.out_dir, resolved))
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


def cmd_sweep(args: argparse.Namespace, planned: Grid) -> int:
    sweep, cells = planned.sweep, planned.cells
    if planned.has_students:  # their checkpoints are found in the tracking store now
        cells = expand(with_students(sweep, lambda source: tracking.deacl_students(
            source.runs, source.experiment, source.epochs, args.tracking_uri)))
    encoders = ResolvedEncoders(c.encoder for c in cells)
    print(f"sweep {sweep.name}: {len(cells)} cells, {len(grid.head_groups(cells))} heads", file=sys.stderr)
    if args.dry_run:
        memory = None if args.gpu_memory is None else memory_plan.trial_memory(args.gpu_memory, sweep.resources.gpu)
        for cell in cells:
            resolved = encoders.of(cell.encoder)
            print(cell.cell_id, cell.head_id, cell.encoder.name, cell.data.name, cell.data.resolved_task,
                  cell.attack.name, f"{cell.attack.eps * 255:.3g}/255", f"steps={cell.attack.steps}",
                  plan_lines.attack_settings(cell), cost.describe(cost.cell_cost(cell, resolved)),
                  *([] if memory is None else [plan_lines.memory_settings(cell, resolved, memory)]))
        print("\n".join(plan_lines.head_line(cell, encoders.of(cell.encoder))
                        for cell in grid.head_groups(cells).values()))
        print("\n".join(cost.summary(cells, _throughput(args.throughput), encoders)))
        if memory is None:
            return 0
        print("\n".join(memory_plan.summary(cells, args.gpu_memory, sweep.resources.gpu, encoders)))
        return _check_memory(cells, memory, args.gpu_memory, encoders)
    report = grid.execute(sweep, cells, args.tracking_uri, args.address, args.num_cpus, args.storage_path,
                          args.resource_timeout, quiet=not args.verbose, encoders=encoders)
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
    uri = tracking.absolute_tracking_uri(args.tracking_uri)
    print("\n".join(where_it_went(out_dir if written else None, uri,
                                   (args.storage_path or "~/ray_results") if report.ran else None,
                                   tracking.ensure_experiment(sweep.name, uri))), file=sys.stderr)
    return _sweep_exit(report.ok, report.interrupted)


def _check_memory(cells: list[CellCfg], memory: int, gpu_memory: int, encoders: ResolvedEncoders) -> int:
    """0 when one image of every cell fits a trial's ``memory``; else 2, the first such cell named on
    stderr with its estimate for one image."""
    unfit = memory_plan.unfit(cells, memory, encoders)
    if not unfit:
        return 0
    cell, found = unfit[0]
    more = f" (and {len(unfit) - 1} more cells)" if len(unfit) > 1 else ""
    print(f"error: --gpu-memory {memory_plan.describe_bytes(gpu_memory)}: cell {cell.cell_id} ({cell.encoder.name} "
          f"{cell.data.name} {cell.attack.name} {cell.attack.eps * 255:.3g}/255) needs "
          f"{memory_plan.describe_bytes(found.at(1))} for one image, more than the "
          f"{memory_plan.describe_bytes(memory)} of one trial{more}", file=sys.stderr)
    return 2


def where_it_went(report_dir: Path | None, tracking_uri: str, storage_path: str | None,
                  experiment_id: str | None = None) -> list[str]:
    """Where a sweep's results are, each with the command that opens it (credentials masked); the
    MLflow address opens the experiment's runs table."""
    tracking_uri = redact(tracking_uri)
    lines = [f"report:      {report_dir.resolve() / 'index.html'}  (open it in a browser)"] if report_dir else []
    local = tracking_uri.startswith("sqlite:")
    server = f"http://127.0.0.1:{tracking.UI_PORT}" if local else tracking_uri
    page = tracking.runs_page(server, experiment_id) if experiment_id else server
    ui = f"mlflow ui --backend-store-uri {tracking_uri} --port {tracking.UI_PORT}, then open {page}" if local \
        else f"open {page}"
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


def cmd_report(args: argparse.Namespace, cfg: None = None) -> int:
    return _write_report(args.experiment, args.tracking_uri, Path(args.out), args.eps, searches=args.search)


def cmd_deacl(args: argparse.Namespace, cfg: Any) -> int:
    print(f"deacl {cfg.deacl_id}: {cfg.encoder.name} on {cfg.data.name}, gamma={cfg.gamma}, "
          f"dense_weight={cfg.dense_weight}, eps={cfg.attack.eps:.5f}, {cfg.epochs} epochs", file=sys.stderr)
    run_id, metrics = run_deacl(cfg, args.tracking_uri, args.experiment)
    if not metrics:
        print(f"already finished: run {run_id}", file=sys.stderr)
    else:
        print_table(metrics)
    last = cfg.epochs
    print(f"run {run_id}; checkpoints: runs:/{run_id}/{student_artifact(last)} (and every "
          f"{cfg.checkpoint_every} epochs)")
    return 0


def cmd_deacl_sweep(args: argparse.Namespace, sweep: Any) -> int:
    configs = deacl_configs(sweep)
    encoders = ResolvedEncoders(c.encoder for c in configs)
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
                                         args.resource_timeout, quiet=not args.verbose, encoders=encoders)
    print("\n".join(report.lines()))
    out_dir, written = Path(args.report.format(name=sweep.name)), False
    if not args.no_report and report.benchmark is not None and not report.signum:
        written = _write_report(sweep.name, args.tracking_uri, out_dir, cell_ids=report.cell_ids) == 0
    uri = tracking.absolute_tracking_uri(args.tracking_uri)
    print("\n".join(where_it_went(out_dir if written else None, uri, args.storage_path or "~/ray_results",
                                   tracking.ensure_experiment(sweep.name, uri))), file=sys.stderr)
    return _sweep_exit(report.ok, report.signum)


def cmd_search(args: argparse.Namespace, search: Any) -> int:
    encoders = ResolvedEncoders([search.deacl.encoder])
    print(f"search {search.name}: {search.n_trials} trials of {search.deacl.epochs} epochs, "
          f"{search.deacl.encoder.name} on {search.deacl.data.name}; study {redact(search.storage_url)}",
          file=sys.stderr)
    if args.dry_run:
        print("\n".join(describe_space(search)))
        return 0
    report = run_search(search, args.tracking_uri, args.storage_path, args.address, args.num_cpus,
                        quiet=not args.verbose, encoders=encoders)
    print("\n".join(report.lines()))
    return 1 if report.failed or report.front.empty else 0


def cmd_convert(args: argparse.Namespace, cfg: None = None) -> int:
    resolved = resolve_encoder(EncoderCfg.model_construct(name=args.encoder)) if args.encoder else None
    source = tracking.local_path(args.checkpoint, tracking_uri=args.tracking_uri)
    prefix, count = convert_checkpoint(source, args.out, args.key, resolved)
    how = "given" if args.key is not None else "found"
    print(f"prefix {prefix!r} ({how}): {count} tensors written to {args.out}")
    print(f"checked: it loads into {args.encoder}" if args.encoder
          else "not checked against an encoder (--encoder NAME checks that it loads)")
    return 0


def _check_store(args: argparse.Namespace) -> None:
    """``report`` reads a store: a SQLite file that is not there would be created empty by MLflow."""
    database = missing_store(tracking.absolute_tracking_uri(args.tracking_uri))
    if database is not None:
        raise FileNotFoundError(f"no MLflow tracking store at {database}, so no experiment {args.experiment!r}; "
                                "give the sweep's store with --tracking-uri or MLFLOW_TRACKING_URI")


def prepare(args: argparse.Namespace, cfg: Any) -> None:
    """Checks before a command starts anything (its config is valid): a relative ``--storage-path``
    (made absolute: trials run elsewhere), the tracking store, the device of a local run, and every
    data set a command reads."""
    if getattr(args, "gpu_memory", None) is not None and not args.dry_run:
        raise UsageError("--gpu-memory plans a dry run: add --dry-run")
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
    if args.command == "run":
        resolve_device(cfg.device)
    elif args.command == "deacl":
        resolve_device(cfg.device)
        preflight.check_available([deacl_data(cfg)])
    elif not args.dry_run:
        preflight.check_available(_grid_data(args.command, cfg))


def _grid_data(command: str, cfg: Any) -> list:
    """The data configs of a sweep, DeACL sweep or search."""
    if command == "sweep":
        return grid_data(cfg)
    if command == "deacl-sweep":
        return deacl_sweep_data(cfg)
    return [deacl_data(cfg.deacl)]


def _throughput(value: str | None) -> float | None:
    """``--throughput``: GFLOP/s, or the benchmark's JSON (``cost.read_throughput``)."""
    try:
        return cost.read_throughput(value) if value is not None else None
    except ValueError as err:
        raise ConfigError(str(err)) from err
