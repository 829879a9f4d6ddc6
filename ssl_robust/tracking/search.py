"""The MLflow side of a DeACL search: its parent run (tag ``phase=search``), the trials' DeACL runs
as its children, and the Pareto-front artifacts and metrics logged when the search ends."""
from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from ssl_robust.tracking.deacl import deacl_runs
from ssl_robust.tracking.store import (absolute_tracking_uri, code_version, ensure_experiment, log_metrics, log_params,
                                       search_runs)

PHASE = "search"
PARENT_TAG = "mlflow.parentRunId"


def open_parent_run(name: str, tracking_uri: str | None, tags: dict[str, str], params: dict[str, str],
                    config_text: str) -> str:
    """The id of the search's parent run: the newest one with the same name and ``tags`` (reopened as
    RUNNING), else a new one with ``params``; ``search.yaml`` is (re)written either way."""
    uri = absolute_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    exp_id = ensure_experiment(name, uri)
    wanted = {"phase": PHASE, "search": name, **tags}
    text = " and ".join(f"tags.`{k}` = '{v}'" for k, v in wanted.items())
    found = sorted(search_runs(client, exp_id, text), key=lambda r: r.info.start_time or 0)
    if found:
        run_id = found[-1].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run_id = client.create_run(exp_id, tags={**wanted, "code_version": code_version()},
                                   run_name=f"search-{name}").info.run_id
        log_params(client, run_id, params)
    client.log_text(run_id, config_text, "search.yaml")
    return run_id


def close_trial_run(experiment: str, tracking_uri: str | None, deacl_id: str, outcome: str) -> str | None:
    """Tag the newest DeACL run of a config with its trial's ``search_outcome`` and mark it KILLED if
    it is still RUNNING; returns its id.

    A trial stopped by the scheduler gets SystemExit inside ``tune.report``: its run usually ends
    FAILED, but the trial's process may exit before it is closed.
    """
    uri = absolute_tracking_uri(tracking_uri)
    runs = deacl_runs(experiment, uri, deacl_id=deacl_id)
    if not runs:
        return None
    client, run = MlflowClient(uri), runs[-1]
    client.set_tag(run.info.run_id, "search_outcome", outcome)
    if run.info.status == "RUNNING":
        client.set_terminated(run.info.run_id, "KILLED")
    return run.info.run_id


def kill_running(experiment: str, tracking_uri: str | None, parent_run_id: str) -> list[str]:
    """Mark KILLED the RUNNING DeACL runs under a parent run (left by killed workers); return their ids."""
    uri = absolute_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    ids = [r.info.run_id for r in deacl_runs(experiment, uri, "RUNNING")
           if r.data.tags.get(PARENT_TAG) == parent_run_id]
    for run_id in ids:
        client.set_terminated(run_id, "KILLED")
    return ids


def epoch_history(run_id: str, tracking_uri: str | None, keys: tuple[str, ...]) -> dict[int, dict[str, float]]:
    """``{epoch: {key: value}}`` of a DeACL run's per-epoch metrics (step = epoch)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    history: dict[int, dict[str, float]] = {}
    for key in keys:
        for metric in client.get_metric_history(run_id, key):
            history.setdefault(metric.step, {})[key] = metric.value
    return dict(sorted(history.items()))


def newest_runs(experiment: str, tracking_uri: str | None) -> dict[str, str]:
    """``{deacl_id: run_id}`` of the experiment's newest DeACL run per config."""
    return {r.data.tags.get("deacl_id", ""): r.info.run_id for r in deacl_runs(experiment, tracking_uri)}


def finish_parent_run(run_id: str, tracking_uri: str | None, files: list[Path],
                      metrics: list[tuple[str, float, int]], status: str = "FINISHED", folder: str = "pareto") -> None:
    """Log ``files`` under ``folder`` and ``(key, value, step)`` metrics, then end the run with ``status``."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    for path in files:
        client.log_artifact(run_id, str(path), folder)
    now = int(time.time() * 1000)
    log_metrics(client, run_id, [Metric(key, float(value), now, step) for key, value, step in metrics])
    client.set_terminated(run_id, status)
