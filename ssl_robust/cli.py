"""``ssl-robust run | sweep | report``: one cell offline, a whole sweep on Ray, or its report."""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError


def format_validation_error(err: ValidationError) -> str:
    """One line per bad field: dotted location, message, offending input."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n" + "\n".join(lines)


def print_table(metrics: dict[str, float]) -> None:
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        print(f"{key:<{width}}  {metrics[key]:.4f}")


def cmd_run(args: argparse.Namespace) -> int:
    from ssl_robust.cell import run_cell
    from ssl_robust.config import load_cell_cfg

    try:
        cfg = load_cell_cfg(args.config, args.overrides)
    except ValidationError as err:
        print(format_validation_error(err), file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as err:
        print(f"invalid config: {err}", file=sys.stderr)
        return 2
    print(f"cell {cfg.cell_id}: {cfg.encoder.name} / {cfg.data.name} ({cfg.data.resolved_task}) / "
          f"{cfg.attack.name} eps={cfg.attack.eps:.5f} steps={cfg.attack.steps}")
    print_table(run_cell(cfg, out_dir=args.out_dir))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ssl_robust.sweep import main as sweep_main

    return sweep_main(["--config", args.config, *args.rest]) or 0


def cmd_report(args: argparse.Namespace) -> int:
    from ssl_robust.config import parse_budget
    from ssl_robust.report import write_report
    from ssl_robust.tracking import run_results

    rows = run_results(args.experiment, tracking_uri=args.tracking_uri)
    if not rows:
        print(f"no finished cells in experiment {args.experiment!r}", file=sys.stderr)
        return 2
    eps = parse_budget(args.eps) if args.eps is not None else None
    page = write_report(rows, args.out, eps=eps, title=f"ssl_robust: {args.experiment}")
    print(f"{len(rows)} cells -> {page}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-robust", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one cell offline and print its metrics")
    run.add_argument("config", help="cell YAML (see configs/)")
    run.add_argument("overrides", nargs="*", help="dotted overrides, e.g. attack.eps=4/255 data.task=depth")
    run.add_argument("--out-dir", default=None, help="write per-sample results and example images here")
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser("sweep", help="run a sweep config on Ray Tune, tracked in MLflow")
    sweep.add_argument("config", help="sweep YAML (see sweeps/)")
    sweep.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the sweep runner")
    sweep.set_defaults(func=cmd_sweep)
    report = sub.add_parser("report", help="poster tables and robustness plots from a sweep's MLflow runs")
    report.add_argument("experiment", help="the sweep's MLflow experiment (its `name`)")
    report.add_argument("--out", default="dashboards/out", help="folder for index.html, tables and plots")
    report.add_argument("--eps", default=None, help="eps of the tables, e.g. 8/255 (default 8/255 or the largest)")
    report.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: env or ./mlflow.db)")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
