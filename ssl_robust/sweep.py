"""Run a sweep on Ray Tune, tracked in MLflow. The only module that imports Ray.

Phase 1 fits one head per head_id with ``prepare_head`` and logs it as an artifact; phase 2 runs
every attack x eps cell with ``head.checkpoint`` pointing at that artifact. Both phases share one
Tune run (a searcher releases a head's cells as soon as the head is finished), so trial actors
start once. Cells and heads with a FINISHED run are skipped and runs left RUNNING by a killed
worker are marked FAILED, so a rerun completes only what is missing.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import ray
from ray import tune
from ray.tune.search import Searcher
from tqdm import tqdm

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from ssl_robust.sweep_config import SweepCfg, SweepConfigError, head_groups, load_sweep

DEFAULT_CONFIG = "sweeps/full_benchmark.yaml"
PRIMARY = ("acc", "miou", "rmse")


@dataclass
class SweepReport:
    """What a sweep did: counts, failures, Ray overhead per trial and the results table."""

    experiment: str
    cells: int
    skipped: int
    heads_fitted: int = 0
    heads_reused: int = 0
    ran: int = 0
    failed: list[str] = field(default_factory=list)
    overhead_s: list[float] = field(default_factory=list)
    amortized_s: float = float("nan")
    table: pd.DataFrame = field(default_factory=pd.DataFrame)


def _localized(cfg: CellCfg, tracking_uri: str) -> CellCfg:
    """The cell with its checkpoint URIs downloaded (with the sweep's tracking URI, not the
    trial's default one)."""
    updates: dict[str, Any] = {}
    for part in ("encoder", "head"):
        section = getattr(cfg, part)
        if section.checkpoint:
            local = tracking.fetch_artifact(section.checkpoint, tracking_uri=tracking_uri)
            updates[part] = section.model_copy(update={"checkpoint": str(local)})
    return cfg.model_copy(update=updates)


def _cell_work(cfg: CellCfg, run: tracking.CellRun, tmp: Path, tracking_uri: str) -> dict[str, float]:
    from ssl_robust.cell import prepare_head, run_cell

    local = _localized(cfg, tracking_uri)
    if run.phase == "head":
        path = tmp / Path(tracking.HEAD_ARTIFACT).name
        metrics = prepare_head(local, path)
        run.log_file(path, str(Path(tracking.HEAD_ARTIFACT).parent))
        return metrics
    metrics = run_cell(local, tmp / "results")
    run.log_dir(tmp / "results", "results")
    return metrics


def trial(config: dict[str, Any]) -> dict[str, Any]:
    """One Tune trial: one head (phase "head") or one cell (phase "attack"), one MLflow run."""
    target, phase = config["target"], config["phase"]
    cfg = CellCfg.model_validate(config["cell"])
    uri, experiment = target["tracking_uri"], target["experiment"]
    key = cfg.head_id if phase == "head" else cfg.cell_id
    done = tracking.finished_runs(experiment, phase, uri, key)
    if done:  # a retry after the run had finished
        return {"run_id": done[key], "reused": 1}
    tracking.fail_stale_runs(experiment, phase, uri, key)
    run = tracking.CellRun(cfg, phase, target["experiment_id"], uri, sweep=experiment)
    with run, tempfile.TemporaryDirectory() as tmp:
        metrics = _cell_work(cfg, run, Path(tmp), uri)
        run.log_metrics(metrics)
    return {**metrics, "run_id": run.run_id, "reused": 0}


COMPUTE_KEY = {"head": "time/head_seconds", "attack": "time/cell_seconds"}


class Progress(tune.Callback):
    """Cells done / total with ETA (heads as a postfix); each trial's wall time minus compute."""

    def __init__(self, total: int, done: int, heads: int) -> None:
        self.total, self.done = total, done
        self.bar: tqdm | None = None
        self.heads_total, self.heads_done = heads, 0
        self.started: dict[str, float] = {}
        self.overhead: list[float] = []
        self.compute: list[float] = []

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks; the bar (an open stream) stays behind."""
        return {**self.__dict__, "bar": None}

    def setup(self, **info: Any) -> None:
        self.bar = tqdm(total=self.total, initial=self.done, desc="cells", unit="cell", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        wall = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
        result, phase = trial.last_result or {}, trial.config["phase"]
        if COMPUTE_KEY[phase] in result and not result.get("reused"):
            self.compute.append(float(result[COMPUTE_KEY[phase]]))
            self.overhead.append(wall - self.compute[-1])
        self._advance(phase)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._advance(trial.config["phase"])

    def _advance(self, phase: str) -> None:
        if self.bar is None:
            return
        if phase == "head":
            self.heads_done += 1
            self.bar.set_postfix_str(f"heads {self.heads_done}/{self.heads_total}")
        else:
            self.bar.update(1)


class TwoPhaseSearcher(Searcher):
    """Suggests the missing heads first, then each cell as soon as its head has a FINISHED run."""

    def __init__(self, target: dict[str, str], heads_todo: list[CellCfg], cells: list[CellCfg],
                 heads_done: dict[str, str]) -> None:
        super().__init__()
        self.target = target
        self.live: dict[str, dict[str, Any]] = {}
        self.queue: deque[dict[str, Any]] = deque(self._config("head", c) for c in heads_todo)
        self.waiting: dict[str, list[CellCfg]] = {}
        for cell in cells:
            self.waiting.setdefault(cell.head_id, []).append(cell)
        for head_id, run_id in heads_done.items():
            self._release(head_id, run_id)

    def _config(self, phase: str, cell: CellCfg) -> dict[str, Any]:
        return {"phase": phase, "target": self.target, "cell": cell.model_dump(mode="json")}

    def _release(self, head_id: str, run_id: str) -> None:
        uri = f"runs:/{run_id}/{tracking.HEAD_ARTIFACT}"
        for cell in self.waiting.pop(head_id, []):
            head = cell.head.model_copy(update={"checkpoint": uri})
            self.queue.append(self._config("attack", cell.model_copy(update={"head": head})))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.queue:
            self.live[trial_id] = self.queue.popleft()
            return self.live[trial_id]
        return None if self.live else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config = self.live.pop(trial_id, None)
        if config and config["phase"] == "head" and not error and result and "run_id" in result:
            self._release(CellCfg.model_validate(config["cell"]).head_id, result["run_id"])

    def stranded(self) -> list[str]:
        """Cells whose head could not be fitted."""
        return [c.cell_id for cells in self.waiting.values() for c in cells]

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: MLflow's FINISHED runs are the resume state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see save)."""


def _trial_dirname(trial: Any) -> str:
    return f"{trial.config['phase']}_{trial.trial_id}"


def _tune(searcher: TwoPhaseSearcher, sweep: SweepCfg, progress: Progress,
          storage_path: str | None) -> list[str]:
    """Run the searcher's trials; return the cell_ids of attack trials that errored."""
    resources = {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu}
    tuner = tune.Tuner(
        tune.with_resources(trial, resources),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, reuse_actors=True,
                                    max_concurrent_trials=sweep.max_concurrent,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path,
            verbose=0, failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[progress],
        ),
    )
    results = tuner.fit()
    return [CellCfg.model_validate(r.config["cell"]).cell_id for r in results
            if r.error is not None and r.config["phase"] == "attack"]


def _primary(row: pd.Series, prefix: str) -> float:
    for name in PRIMARY:
        value = row.get(f"{prefix}/{name}")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return float(value)
    return float("nan")


def summary_table(rows: list[dict[str, Any]], cell_ids: set[str]) -> pd.DataFrame:
    """One row per finished cell of the grid: axes, primary clean/adv metric, sanity checks."""
    df = pd.DataFrame([r for r in rows if r.get("cell_id") in cell_ids])
    if df.empty:
        return df
    out = df[["encoder", "dataset", "task", "attack", "eps_255", "steps"]].copy()
    out["metric"] = [next((m for m in PRIMARY if f"clean/{m}" in r and pd.notna(r[f"clean/{m}"])), "")
                     for _, r in df.iterrows()]
    out["clean"] = [_primary(r, "clean") for _, r in df.iterrows()]
    out["adv"] = [_primary(r, "adv") for _, r in df.iterrows()]
    out["checks_ok"] = df["check/all_passed"] if "check/all_passed" in df else float("nan")
    out["eps_255"] = out["eps_255"].astype(float)
    return out.sort_values(["encoder", "dataset", "task", "attack", "eps_255"]).reset_index(drop=True)


def run_sweep(sweep: SweepCfg, cells: list[CellCfg], tracking_uri: str | None = None,
              storage_path: str | None = None) -> SweepReport:
    """Fit the missing heads and run the cells not yet finished (Ray must be initialised)."""
    uri = tracking.absolute_tracking_uri(tracking_uri)
    target = {"tracking_uri": uri, "experiment": sweep.name,
              "experiment_id": tracking.ensure_experiment(sweep.name, uri)}
    done = tracking.finished_cells(sweep.name, uri)
    todo = [c for c in cells if c.cell_id not in done]
    heads = tracking.finished_runs(sweep.name, "head", uri)
    groups = head_groups(todo)
    missing = [c for h, c in groups.items() if h not in heads]
    report = SweepReport(sweep.name, len(cells), len(cells) - len(todo),
                         heads_fitted=len(missing), heads_reused=len(groups) - len(missing))
    if todo:
        searcher = TwoPhaseSearcher(target, missing, todo, {h: heads[h] for h in groups if h in heads})
        progress = Progress(len(cells), report.skipped, len(missing))
        start = time.monotonic()
        errored = _tune(searcher, sweep, progress, storage_path)
        progress.close()
        report.failed = errored + searcher.stranded()
        report.ran = len(todo) - len(report.failed)
        report.overhead_s = progress.overhead
        n_trials = len(progress.compute)
        if n_trials:
            busy = (time.monotonic() - start) * _slots(sweep, len(todo))
            report.amortized_s = (busy - sum(progress.compute)) / n_trials
    report.table = summary_table(tracking.run_results(sweep.name, "attack", uri),
                                 {c.cell_id for c in cells})
    return report


def _slots(sweep: SweepCfg, n_trials: int) -> int:
    """How many trials the cluster runs at once."""
    have = ray.cluster_resources()
    slots = [n_trials, int(have.get("CPU", 1) // sweep.resources.cpu)]
    if sweep.resources.gpu:
        slots.append(int(have.get("GPU", 0) // sweep.resources.gpu))
    if sweep.max_concurrent:
        slots.append(sweep.max_concurrent)
    return max(1, min(slots))


def _check_resources(sweep: SweepCfg) -> None:
    """Fail fast when a local instance cannot host one trial (a cluster may still scale up)."""
    have = ray.cluster_resources()
    for name, want in (("CPU", sweep.resources.cpu), ("GPU", sweep.resources.gpu)):
        if want > have.get(name, 0):
            raise SweepConfigError(f"resources.{name.lower()}={want} but this Ray instance has "
                                   f"{have.get(name, 0)} {name}; lower it or join a cluster")


def print_report(report: SweepReport, out: Callable[[str], Any] = print) -> None:
    """The summary table and the counts."""
    if not report.table.empty:
        out(report.table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    out(f"experiment {report.experiment}: {report.cells} cells, {report.skipped} already finished, "
        f"{report.ran} run now, {len(report.failed)} failed; heads fitted {report.heads_fitted}, "
        f"reused {report.heads_reused}")
    if report.overhead_s:
        out(f"Ray overhead per trial: median {statistics.median(report.overhead_s):.2f} s (trial start "
            f"to end minus compute); {report.amortized_s:.2f} s per trial amortized over the run")
    for cell_id in report.failed:
        out(f"failed: {cell_id}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssl-robust sweep", description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="sweep YAML")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment (default: the sweep's name)")
    parser.add_argument("--address", default=None,
                        help="Ray address: none joins a running cluster or starts one; 'local' starts one")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a Ray instance started here")
    parser.add_argument("--storage-path", default=None, help="Ray Tune results folder or URI")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the grid, run nothing")
    parser.add_argument("--report", default="dashboards/{name}",
                        help="folder for the tables and plots of the finished cells ({name} = the sweep's name)")
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the sweep, e.g. seed=1")
    return parser


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray unless already initialised; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    return True


def config_path(path: str) -> Path:
    """The path as given, else relative to the source tree (``ray submit`` runs from $HOME)."""
    given = Path(path).expanduser()
    beside = Path(__file__).resolve().parents[1] / path
    return beside if not given.exists() and not given.is_absolute() and beside.exists() else given


def _print_grid(cells: list[CellCfg]) -> None:
    for cell in cells:
        print(cell.cell_id, cell.head_id, cell.encoder.name, cell.data.name, cell.data.resolved_task,
              cell.attack.name, f"{cell.attack.eps * 255:.3g}/255")


def _execute(args: argparse.Namespace, sweep: SweepCfg, cells: list[CellCfg]) -> SweepReport:
    """Run the sweep; Ray is started (or joined) only when some cell is not finished yet."""
    done = tracking.finished_cells(sweep.name, args.tracking_uri)
    if all(c.cell_id in done for c in cells):
        return run_sweep(sweep, cells, args.tracking_uri, args.storage_path)
    started = _init_ray(args.address, args.num_cpus)
    try:
        if started:
            _check_resources(sweep)
        return run_sweep(sweep, cells, args.tracking_uri, args.storage_path)
    finally:
        if started:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Validate the sweep (before Ray starts), run it, print the table; 0 when every cell finished."""
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ([f"name={args.experiment}"] if args.experiment else [])
    try:
        sweep, cells = load_sweep(config_path(args.config), overrides)
    except (SweepConfigError, OSError) as err:
        print(f"invalid sweep config:\n{err}", file=sys.stderr)
        return 2
    print(f"sweep {sweep.name}: {len(cells)} cells, {len(head_groups(cells))} heads", file=sys.stderr)
    if args.dry_run:
        _print_grid(cells)
        return 0
    try:
        report = _execute(args, sweep, cells)
    except SweepConfigError as err:
        print(f"sweep cannot run here:\n{err}", file=sys.stderr)
        return 2
    print_report(report)
    if not args.no_report:
        _write_report(sweep.name, args.tracking_uri, Path(args.report.format(name=sweep.name)))
    return 1 if report.failed else 0


def _write_report(experiment: str, tracking_uri: str | None, out_dir: Path) -> None:
    from ssl_robust.report import write_report

    rows = tracking.run_results(experiment, tracking_uri=tracking_uri)
    if rows:
        page = write_report(rows, out_dir, title=f"ssl_robust: {experiment}")
        print(f"report: {page}", file=sys.stderr)
