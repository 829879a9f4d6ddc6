"""The benchmark sweep on Ray Tune, tracked in MLflow.

Phase 1 fits one head per head_id with ``prepare_head`` and logs it as an artifact; phase 2 runs
every attack x eps cell with ``head.checkpoint`` pointing at that artifact. Both phases share one
Tune run (a searcher releases a head's cells as soon as the head is finished), so trial actors
start once. Cells and heads with a FINISHED run are skipped and runs left RUNNING by a killed
worker are marked FAILED, so a rerun completes only what is missing.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import ray
from ray import tune
from ray.tune.search import Searcher
from tqdm import tqdm

from ssl_robust import tracking
from ssl_robust.cell import prepare_head, run_cell
from ssl_robust.config import CellCfg, ConfigError
from ssl_robust.report import summary_table
from ssl_robust.sweep_config import Resources, SweepCfg, head_groups


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

    def lines(self) -> list[str]:
        """The summary table, the counts, the Ray overhead and the failed cells, as printable lines."""
        out = [self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")] if not self.table.empty else []
        out.append(f"experiment {self.experiment}: {self.cells} cells, {self.skipped} already finished, "
                   f"{self.ran} run now, {len(self.failed)} failed; heads fitted {self.heads_fitted}, "
                   f"reused {self.heads_reused}")
        if self.overhead_s:
            out.append(f"Ray overhead per trial: median {statistics.median(self.overhead_s):.2f} s (trial "
                       f"start to end minus compute); {self.amortized_s:.2f} s per trial amortized over the run")
        return out + [f"failed: {cell_id}" for cell_id in self.failed]


def _cell_work(cfg: CellCfg, run: tracking.CellRun, tmp: Path, tracking_uri: str) -> dict[str, float]:
    local = tracking.localize(cfg, tracking_uri)
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
    destination, phase = config["destination"], config["phase"]
    cfg = CellCfg.model_validate(config["cell"])
    uri, experiment = destination["tracking_uri"], destination["experiment"]
    key = cfg.head_id if phase == "head" else cfg.cell_id
    done = tracking.finished_runs(experiment, phase, uri, key)
    if done:  # a retry after the run had finished
        return {"run_id": done[key], "reused": 1}
    tracking.fail_stale_runs(experiment, phase, uri, key)
    run = tracking.CellRun(cfg, phase, destination["experiment_id"], uri, sweep=experiment)
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

    def __init__(self, destination: dict[str, str], heads_todo: list[CellCfg], cells: list[CellCfg],
                 heads_done: dict[str, str]) -> None:
        super().__init__()
        self.destination = destination
        self.live: dict[str, dict[str, Any]] = {}
        self.queue: deque[dict[str, Any]] = deque(self._config("head", c) for c in heads_todo)
        self.waiting: dict[str, list[CellCfg]] = {}
        for cell in cells:
            self.waiting.setdefault(cell.head_id, []).append(cell)
        for head_id, run_id in heads_done.items():
            self._release(head_id, run_id)

    def _config(self, phase: str, cell: CellCfg) -> dict[str, Any]:
        return {"phase": phase, "destination": self.destination, "cell": cell.model_dump(mode="json")}

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


def run_sweep(sweep: SweepCfg, cells: list[CellCfg], tracking_uri: str | None = None,
              storage_path: str | None = None) -> SweepReport:
    """Fit the missing heads and run the cells not yet finished (Ray must be initialised)."""
    uri = tracking.absolute_tracking_uri(tracking_uri)
    destination = {"tracking_uri": uri, "experiment": sweep.name,
              "experiment_id": tracking.ensure_experiment(sweep.name, uri)}
    done = tracking.finished_cells(sweep.name, uri)
    todo = [c for c in cells if c.cell_id not in done]
    heads = tracking.finished_runs(sweep.name, "head", uri)
    groups = head_groups(todo)
    missing = [c for h, c in groups.items() if h not in heads]
    report = SweepReport(sweep.name, len(cells), len(cells) - len(todo),
                         heads_fitted=len(missing), heads_reused=len(groups) - len(missing))
    if todo:
        searcher = TwoPhaseSearcher(destination, missing, todo, {h: heads[h] for h in groups if h in heads})
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


def _check_resources(resources: Resources) -> None:
    """Fail fast when a local instance cannot host one trial (a cluster may still scale up)."""
    have = ray.cluster_resources()
    for name, want in (("CPU", resources.cpu), ("GPU", resources.gpu)):
        if want > have.get(name, 0):
            raise ConfigError(f"resources.{name.lower()}={want} but this Ray instance has "
                                   f"{have.get(name, 0)} {name}; lower it or join a cluster")


def _init_ray(address: str | None, num_cpus: int | None) -> bool:
    """Start or join Ray unless already initialised; True when this call started it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False} if address == "local" else {}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    ray.init(address=address, **kwargs)
    return True




def execute(sweep: SweepCfg, cells: list[CellCfg], tracking_uri: str | None = None,
            address: str | None = None, num_cpus: int | None = None,
            storage_path: str | None = None) -> SweepReport:
    """Run the sweep; Ray is started (or joined) only when some cell is not finished yet."""
    done = tracking.finished_cells(sweep.name, tracking_uri)
    if all(c.cell_id in done for c in cells):
        return run_sweep(sweep, cells, tracking_uri, storage_path)
    with ray_session(sweep.resources, address, num_cpus):
        return run_sweep(sweep, cells, tracking_uri, storage_path)


@contextlib.contextmanager
def ray_session(resources: Resources, address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block: joined or started (and then shut down) here."""
    started = _init_ray(address, num_cpus)
    try:
        if started:
            _check_resources(resources)
        yield
    finally:
        if started:
            ray.shutdown()
