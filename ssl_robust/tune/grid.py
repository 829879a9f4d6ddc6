"""The benchmark sweep on Ray Tune, tracked in MLflow.

Phase 1 fits one head per head_id with ``prepare_head`` and logs it as an artifact; phase 2 runs
every attack x eps cell with ``head.checkpoint`` pointing at that artifact. Both phases share one
Tune run (a searcher releases a head's cells as soon as the head is finished), so trial actors
start once. Cells and heads with a FINISHED run are skipped (a head only while its artifact is
there), and each trial claims its cell or head (``tracking.claims``), so a rerun completes only what
is missing and concurrent sweeps on one experiment never run a cell twice. SIGINT/SIGTERM stop the
trials and mark the runs they leave RUNNING KILLED; counts come from the store after the run.
"""
from __future__ import annotations

import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
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
from ssl_robust.cell import run_cell
from ssl_robust.head_fit import prepare_head
from ssl_robust.config import CellCfg
from ssl_robust.encoders import ResolvedEncoder, ResolvedEncoders
from ssl_robust.report import summary_table
from ssl_robust.report.fetch import referenced_deacl_runs
from ssl_robust.sweep_config import SweepCfg, head_groups
from ssl_robust.tracking.cells import close_session_runs, finished_heads, run_claimed
from ssl_robust.tune.cluster import RESOURCE_TIMEOUT_S, ray_session
from ssl_robust.tune.interrupt import Interrupt

__all__ = ["RESOURCE_TIMEOUT_S", "SweepReport", "execute", "head_groups", "ray_session", "run_sweep", "trial"]


@dataclass
class SweepReport:
    """What a sweep did, counted in the tracking store after the run: FINISHED cells of the grid
    (before and after), the unfinished ones, heads, Ray overhead per trial and the results table."""

    experiment: str
    cells: int
    skipped: int  # FINISHED before this run
    session: str = ""  # this run's session id (tag ``session`` of its runs)
    finished: int = 0  # FINISHED after this run
    heads_fitted: int = 0
    heads_reused: int = 0
    failed: list[str] = field(default_factory=list)  # cells of the grid not FINISHED after the run
    interrupted: int = 0  # the signal that stopped the sweep, if any
    overhead_s: list[float] = field(default_factory=list)
    amortized_s: float = float("nan")
    table: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def ran(self) -> bool:
        """Some cell was missing, so this run started work (and has a session worth recording)."""
        return self.skipped < self.cells

    @property
    def ok(self) -> bool:
        """Every cell of the grid is FINISHED."""
        return not self.failed and not self.interrupted

    def lines(self) -> list[str]:
        """The summary table, the counts, the Ray overhead and the unfinished cells, as printable lines."""
        out = [self.table.to_string(index=False, float_format=lambda v: f"{v:.4g}")] if not self.table.empty else []
        out.append(f"experiment {self.experiment}: {self.cells} cells, {self.finished} FINISHED "
                   f"({self.skipped} before this run), {len(self.failed)} not finished; heads fitted "
                   f"{self.heads_fitted}, reused {self.heads_reused}")
        if self.overhead_s:
            out.append(f"Ray overhead per trial: median {statistics.median(self.overhead_s):.2f} s (trial "
                       f"start to end minus compute); {self.amortized_s:.2f} s per trial amortized over the run")
        if self.interrupted:
            return out + [f"interrupted by {signal.Signals(self.interrupted).name}: {self.finished} of "
                          f"{self.cells} cells FINISHED; runs left RUNNING are marked KILLED. Run the same "
                          "command again to resume: FINISHED cells are skipped"]
        return out + [f"not finished: {cell_id}" for cell_id in self.failed]


def _cell_work(cfg: CellCfg, resolved: ResolvedEncoder, run: tracking.CellRun, tmp: Path,
               tracking_uri: str) -> dict[str, float]:
    local = tracking.localize(cfg, tracking_uri)
    if run.phase == "head":
        path = tmp / Path(tracking.HEAD_ARTIFACT).name
        metrics = prepare_head(local, path, resolved)
        run.log_file(path, str(Path(tracking.HEAD_ARTIFACT).parent))
        return metrics
    metrics = run_cell(local, tmp / "results", resolved)
    run.log_dir(tmp / "results", "results")
    return metrics


def trial(config: dict[str, Any]) -> dict[str, Any]:
    """One Tune trial: one head (phase "head") or one cell (phase "attack"), one MLflow run; a valid
    FINISHED run of the same key (from a retry, a rerun or a concurrent sweep) is reused."""
    destination, phase = config["destination"], config["phase"]
    cfg = CellCfg.model_validate(config["cell"])
    resolved = ResolvedEncoders.from_dict(config["encoders"]).of(cfg.encoder)
    uri = destination["tracking_uri"]
    with tempfile.TemporaryDirectory() as tmp:
        run_id, metrics = run_claimed(cfg, phase, destination["experiment_id"], uri,
                                      lambda run: _cell_work(cfg, resolved, run, Path(tmp), uri),
                                      sweep=destination["experiment"], session=destination["session"])
    return {"run_id": run_id, "reused": 1} if metrics is None else {**metrics, "run_id": run_id, "reused": 0}


COMPUTE_KEY = {"head": "time/head_seconds", "attack": "time/cell_seconds"}


class Progress(tune.Callback):
    """Cells done / total with ETA (heads as a postfix); each trial's wall time minus compute."""

    def __init__(self, total: int, done: int, heads: int) -> None:
        self.total, self.done = total, done
        self.bar: tqdm | None = None
        self.heads_total, self.heads_done, self.heads_fitted, self.heads_reused = heads, 0, 0, 0
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
            self.heads_fitted += phase == "head"
        self.heads_reused += phase == "head" and bool(result.get("reused"))
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
                 heads_done: dict[str, str], encoders: ResolvedEncoders) -> None:
        super().__init__()
        self.destination = destination
        self.encoders = encoders.as_dict()
        self.live: dict[str, dict[str, Any]] = {}
        self.queue: deque[dict[str, Any]] = deque(self._config("head", c) for c in heads_todo)
        self.waiting: dict[str, list[CellCfg]] = {}
        for cell in cells:
            self.waiting.setdefault(cell.head_id, []).append(cell)
        for head_id, run_id in heads_done.items():
            self._release(head_id, run_id)

    def _config(self, phase: str, cell: CellCfg) -> dict[str, Any]:
        return {"phase": phase, "destination": self.destination, "cell": cell.model_dump(mode="json"),
                "encoders": self.encoders}

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

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: MLflow's FINISHED runs are the resume state."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see save)."""


def _trial_dirname(trial: Any) -> str:
    return f"{trial.config['phase']}_{trial.trial_id}"


def _tune(searcher: TwoPhaseSearcher, sweep: SweepCfg, progress: Progress, storage_path: str | None,
          interrupt: Interrupt) -> None:
    """Run the searcher's trials (a signal ends the run the way Ctrl-C ends a Tune run)."""
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
    with interrupt.tune_run(), legacy_tune_output():
        tuner.fit()


@contextlib.contextmanager
def legacy_tune_output() -> Iterator[None]:
    """Tune's legacy reporter for the run: with ``verbose=0`` it prints nothing, where the default
    one still prints its "Configuration for experiment" box and "View detailed results here"
    (``RAY_AIR_NEW_OUTPUT=0``, read by Tune when the run starts); the sweep prints its own summary."""
    saved = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = saved


def run_sweep(sweep: SweepCfg, cells: list[CellCfg], report: SweepReport, destination: dict[str, str],
              storage_path: str | None, interrupt: Interrupt, encoders: ResolvedEncoders) -> None:
    """Fit the missing heads and run the cells not yet finished (Ray must be initialised), their
    encoders as ``encoders`` resolved them."""
    uri = destination["tracking_uri"]
    done = tracking.finished_cells(sweep.name, uri)
    todo = [c for c in cells if c.cell_id not in done]
    heads = finished_heads(sweep.name, uri)
    groups = head_groups(todo)
    missing = [c for h, c in groups.items() if h not in heads]
    report.heads_reused = len(groups) - len(missing)
    if not todo:
        return
    searcher = TwoPhaseSearcher(destination, missing, todo, {h: heads[h] for h in groups if h in heads}, encoders)
    progress = Progress(len(cells), len(cells) - len(todo), len(missing))
    start = time.monotonic()
    try:
        _tune(searcher, sweep, progress, storage_path, interrupt)
    finally:
        progress.close()
        report.heads_fitted = progress.heads_fitted
        report.heads_reused += progress.heads_reused
        report.overhead_s = progress.overhead
    if progress.compute:
        busy = (time.monotonic() - start) * _slots(sweep, len(todo))
        report.amortized_s = (busy - sum(progress.compute)) / len(progress.compute)


def _slots(sweep: SweepCfg, n_trials: int) -> int:
    """How many trials the cluster runs at once."""
    have = ray.cluster_resources()
    slots = [n_trials, int(have.get("CPU", 1) // sweep.resources.cpu)]
    if sweep.resources.gpu:
        slots.append(int(have.get("GPU", 0) // sweep.resources.gpu))
    if sweep.max_concurrent:
        slots.append(sweep.max_concurrent)
    return max(1, min(slots))


def execute(sweep: SweepCfg, cells: list[CellCfg], tracking_uri: str | None = None,
            address: str | None = None, num_cpus: int | None = None, storage_path: str | None = None,
            resource_timeout: float = RESOURCE_TIMEOUT_S, quiet: bool = True,
            encoders: ResolvedEncoders | None = None) -> SweepReport:
    """Run the sweep and count its cells in the store; Ray is started (or joined) only when some
    cell is not finished yet. SIGINT/SIGTERM end it early with ``report.interrupted`` set.
    ``quiet``: Ray and the trials print only warnings and errors (``ray_session``); ``encoders``:
    the cells' encoders as the command resolved them (None: resolved here)."""
    uri = tracking.absolute_tracking_uri(tracking_uri)
    destination = {"tracking_uri": uri, "experiment": sweep.name, "session": uuid.uuid4().hex[:16],
                   "experiment_id": tracking.ensure_experiment(sweep.name, uri, sweep.description)}
    ids = {c.cell_id for c in cells}
    report = SweepReport(sweep.name, len(ids), len(ids & set(tracking.finished_cells(sweep.name, uri))),
                         session=destination["session"])
    with Interrupt() as interrupt:
        try:
            if report.skipped < len(ids):
                with ray_session(sweep.resources, address, num_cpus, uri, resource_timeout, quiet):
                    interrupt.arm()
                    run_sweep(sweep, cells, report, destination, storage_path, interrupt,
                              encoders or ResolvedEncoders(c.encoder for c in cells))
        finally:
            close_session_runs(sweep.name, destination["session"], "KILLED" if interrupt.signum else "FAILED", uri)
    report.interrupted = interrupt.signum
    finished = set(tracking.finished_cells(sweep.name, uri))
    report.finished = len(ids & finished)
    report.failed = [c.cell_id for c in cells if c.cell_id not in finished]
    if not report.interrupted:
        rows = tracking.run_results(sweep.name, "attack", uri)
        report.table = summary_table(rows, ids, referenced_deacl_runs(rows, [], uri))
    return report
