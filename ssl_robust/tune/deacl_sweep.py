"""The DeACL sweep on Ray Tune: one fine-tune per grid point (each its own MLflow run), then the
benchmark grid on every chosen epoch of every fine-tune, in the same experiment.

Fine-tunes and cells that already FINISHED are skipped; a killed fine-tune resumes its own run
from its last checkpoint. So one command gives the poster's robustness-over-epochs curve, and a
rerun finishes only what is missing.
"""
from __future__ import annotations

import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from ssl_robust import tracking
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.encoders import ResolvedEncoders
from ssl_robust.finetune import run_deacl
from ssl_robust.sweep_config import (DeaclSweepCfg, SweepCfg, benchmark_sweep, deacl_configs, expand,
                                     with_students)
from ssl_robust.tracking.cells import close_session_runs
from ssl_robust.tune import grid
from ssl_robust.tune.cluster import RESOURCE_TIMEOUT_S
from ssl_robust.tune.interrupt import Interrupt


@dataclass
class DeaclSweepReport:
    """The fine-tunes (run ids, failures) and the benchmark's own report."""

    fine_tunes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # deacl_ids that did not finish
    benchmark: grid.SweepReport | None = None
    cell_ids: set[str] = field(default_factory=set)  # the benchmark's cells
    interrupted: int = 0  # the signal that stopped the fine-tunes, if any

    @property
    def ok(self) -> bool:
        """Every fine-tune and every benchmark cell FINISHED."""
        return not self.failed and not self.interrupted and self.benchmark is not None and self.benchmark.ok

    @property
    def signum(self) -> int:
        return self.interrupted or (self.benchmark.interrupted if self.benchmark else 0)

    def lines(self) -> list[str]:
        out = [f"fine-tunes: {len(self.fine_tunes)} finished, {len(self.failed)} not finished"]
        out += [f"not finished fine-tune: {deacl_id}" for deacl_id in self.failed]
        if self.interrupted:
            out.append(f"interrupted by {signal.Signals(self.interrupted).name} during the fine-tunes; run the "
                       "same command again to resume (unfinished fine-tunes continue from their last checkpoint)")
        return out + (self.benchmark.lines() if self.benchmark else [])


def fine_tune_trial(config: dict[str, Any]) -> dict[str, Any]:
    """One Tune trial: one tracked, resumable fine-tune."""
    cfg = DeaclCfg.model_validate(config["deacl"])
    resolved = ResolvedEncoders.from_dict(config["encoders"]).of(cfg.encoder)
    run_id, metrics = run_deacl(cfg, config["tracking_uri"],
                                tags={"deacl_sweep": cfg.name, "sweep_session": config["session"]}, resolved=resolved)
    return {**metrics, "run_id": run_id}


def _finished(sweep: DeaclSweepCfg, uri: str) -> dict[str, str]:
    """``{deacl_id: run_id}`` of the experiment's FINISHED fine-tunes (the oldest run wins)."""
    found: dict[str, str] = {}
    for run in tracking.deacl_runs(sweep.name, uri, "FINISHED"):
        found.setdefault(run.data.tags["deacl_id"], run.info.run_id)
    return found


def _fine_tune(sweep: DeaclSweepCfg, todo: list[DeaclCfg], uri: str, storage_path: str | None,
               session: str, interrupt: Interrupt, encoders: ResolvedEncoders) -> None:
    resources = {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu}
    tuner = tune.Tuner(
        tune.with_resources(fine_tune_trial, resources),
        param_space={"deacl": tune.grid_search([c.model_dump(mode="json") for c in todo]), "tracking_uri": uri,
                     "session": session, "encoders": encoders.as_dict()},
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent,
                                    trial_dirname_creator=lambda trial: f"deacl_{trial.trial_id}"),
        run_config=tune.RunConfig(name=f"{sweep.name}-deacl-{time.strftime('%Y%m%d-%H%M%S')}",
                                  storage_path=storage_path, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
    )
    with interrupt.tune_run(), grid.legacy_tune_output():
        tuner.fit()


def benchmark_of(sweep: DeaclSweepCfg, runs: list[str], uri: str) -> tuple[SweepCfg, list]:
    """The benchmark sweep of the fine-tunes' students, resolved and expanded into cells."""
    bench = with_students(benchmark_sweep(sweep, runs), lambda source: tracking.deacl_students(
        source.runs, source.experiment, source.epochs, uri))
    return bench, expand(bench)


def run_deacl_sweep(sweep: DeaclSweepCfg, tracking_uri: str | None = None, address: str | None = None,
                    num_cpus: int | None = None, storage_path: str | None = None,
                    resource_timeout: float = RESOURCE_TIMEOUT_S, quiet: bool = True,
                    encoders: ResolvedEncoders | None = None) -> DeaclSweepReport:
    """Fine-tune what is missing, then benchmark every finished fine-tune's chosen epochs; a signal
    during the fine-tunes marks their running runs KILLED (they resume) and skips the benchmark.
    ``encoders``: the fine-tunes' encoders as the command resolved them (None: resolved here); the
    students resolve as their teachers."""
    uri = tracking.absolute_tracking_uri(tracking_uri)
    tracking.ensure_experiment(sweep.name, uri)
    configs = deacl_configs(sweep)
    encoders = encoders or ResolvedEncoders(c.encoder for c in configs)
    todo = [c for c in configs if c.deacl_id not in _finished(sweep, uri)]
    report, session = DeaclSweepReport(), uuid.uuid4().hex[:16]
    if todo:
        with Interrupt() as interrupt:
            try:
                with grid.ray_session(sweep.resources, address, num_cpus, uri, resource_timeout, quiet):
                    interrupt.arm()
                    _fine_tune(sweep, todo, uri, storage_path, session, interrupt, encoders)
            finally:
                close_session_runs(sweep.name, session, "KILLED" if interrupt.signum else "FAILED", uri)
        report.interrupted = interrupt.signum
    finished = _finished(sweep, uri)
    report.fine_tunes = [finished[c.deacl_id] for c in configs if c.deacl_id in finished]
    report.failed = [c.deacl_id for c in configs if c.deacl_id not in finished]
    if report.fine_tunes and not report.interrupted:
        bench, cells = benchmark_of(sweep, report.fine_tunes, uri)
        report.cell_ids = {c.cell_id for c in cells}
        report.benchmark = grid.execute(bench, cells, uri, address, num_cpus, storage_path, resource_timeout, quiet,
                                        encoders)
    return report
