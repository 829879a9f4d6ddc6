"""``ssl-robust run | sweep``: one cell offline, or a whole sweep on Ray."""
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
