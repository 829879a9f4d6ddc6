"""One MLflow run per cell or head: params, tags, metrics, artifacts, and the finished-cell lookup."""
from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from ssl_robust.config import CellCfg
from ssl_robust.tracking.claims import CLAIM_TAG, DUPLICATE, Claim, Heartbeat, owner_tags
from ssl_robust.tracking.store import (absolute_tracking_uri, code_version, experiment_id, flatten, log_metrics,
                                       log_params, search_runs)

PHASES = ("head", "attack")
KEY_TAG = {"head": "head_id", "attack": "cell_id"}
HEAD_ARTIFACT = "head/head.safetensors"


def cell_params(cfg: CellCfg, phase: str) -> dict[str, str]:
    """Flattened resolved config plus short names (encoder, dataset, task, attack, eps, steps)."""
    full = cfg.model_dump(mode="json")
    short = {"encoder": cfg.encoder.name, "dataset": cfg.data.name, "task": cfg.data.resolved_task}
    if phase == "head":
        full = {k: full[k] for k in ("encoder", "data", "head", "seed", "batch_size", "device")}
        return {**flatten(full), **short}
    eps = cfg.attack.eps
    short.update(attack=cfg.attack.name, eps=f"{eps:.6g}", eps_255=f"{eps * 255:.4g}",
                 steps=str(cfg.attack.steps))
    return {**flatten(full), **short}


def _filter(phase: str, status: str | None, key_value: str | None = None) -> str:
    text = f"tags.phase = '{phase}'" + (f" and attributes.status = '{status}'" if status else "")
    return text + (f" and tags.{KEY_TAG[phase]} = '{key_value}'" if key_value else "")


def head_artifact_ok(client: MlflowClient, run: Any) -> bool:
    """Whether a FINISHED head run still has its weights; if not, it is tagged
    ``artifact_missing=true`` and marked FAILED, so that the head is fitted again."""
    folder = str(Path(HEAD_ARTIFACT).parent)
    if any(f.path == HEAD_ARTIFACT for f in client.list_artifacts(run.info.run_id, folder)):
        return True
    client.set_tag(run.info.run_id, "artifact_missing", "true")
    client.set_terminated(run.info.run_id, "FAILED")
    return False


def claim_for(tracking_uri: str, experiment_id: str, phase: str, key_value: str) -> Claim:
    """The claim of one cell (phase ``attack``) or head (phase ``head``); see ``tracking.claims``."""
    return Claim(MlflowClient(absolute_tracking_uri(tracking_uri)), experiment_id, _filter(phase, None, key_value),
                 head_artifact_ok if phase == "head" else None)


def run_claimed(cfg: CellCfg, phase: str, experiment_id: str, tracking_uri: str,
                work: Callable[["CellRun"], dict[str, float]], sweep: str = "",
                session: str = "") -> tuple[str, dict[str, float] | None]:
    """``work(run)`` in a new run of the cell or head once this process holds its claim; returns
    ``(run_id, metrics)``, or ``(run_id, None)`` when a valid FINISHED run of the key is reused."""
    key = cfg.head_id if phase == "head" else cfg.cell_id
    claim = claim_for(tracking_uri, experiment_id, phase, key)
    while True:
        done = claim.wait()
        if done:
            return done, None
        with CellRun(cfg, phase, experiment_id, tracking_uri, sweep=sweep, session=session) as run:
            if not claim.acquire(run.run_id):
                run.discard()
                continue
            metrics = work(run)
            if not claim.confirm(run.run_id):
                run.discard(duplicate=True)
                continue
            run.log_metrics(metrics)
        return run.run_id, metrics


def finished_heads(experiment: str, tracking_uri: str | None = None) -> dict[str, str]:
    """``{head_id: run_id}`` of FINISHED head runs whose artifact is there (oldest valid run wins)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return {}
    found: dict[str, str] = {}
    runs = sorted(search_runs(client, exp_id, _filter("head", "FINISHED")), key=lambda r: r.info.start_time or 0)
    for run in runs:
        head_id = run.data.tags.get("head_id", "")
        if head_id and head_id not in found and head_artifact_ok(client, run):
            found[head_id] = run.info.run_id
    return found


def close_session_runs(experiment: str, session: str, status: str, tracking_uri: str | None = None) -> list[str]:
    """Mark ``status`` the runs a sweep session left RUNNING (tag ``sweep_session``); return their ids."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return []
    text = f"tags.sweep_session = '{session}' and attributes.status = 'RUNNING'"
    ids = [r.info.run_id for r in search_runs(client, exp_id, text)]
    for run_id in ids:
        client.set_terminated(run_id, status)
    return ids


def finished_runs(experiment: str, phase: str = "attack", tracking_uri: str | None = None,
                  key_value: str | None = None) -> dict[str, str]:
    """``{cell_id or head_id: run_id}`` of FINISHED runs of one phase (oldest run wins)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return {}
    found: dict[str, str] = {}
    runs = sorted(search_runs(client, exp_id, _filter(phase, "FINISHED", key_value)),
                  key=lambda r: r.info.start_time or 0)
    for run in runs:
        found.setdefault(run.data.tags.get(KEY_TAG[phase], ""), run.info.run_id)
    found.pop("", None)
    return found


def finished_cells(experiment: str, tracking_uri: str | None = None) -> dict[str, str]:
    """``{cell_id: run_id}`` of the experiment's FINISHED attack (phase 2) runs."""
    return finished_runs(experiment, "attack", tracking_uri)


def fail_stale_runs(experiment: str, phase: str, tracking_uri: str | None = None,
                    key_value: str | None = None) -> list[str]:
    """Mark runs left RUNNING (by a killed worker or driver) FAILED; return their ids."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return []
    stale = [r.info.run_id for r in search_runs(client, exp_id, _filter(phase, "RUNNING", key_value))]
    for run_id in stale:
        client.set_terminated(run_id, "FAILED")
    return stale


def run_results(experiment: str, phase: str = "attack", tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Params, metrics and run id of every FINISHED run of a phase (one row each)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return []
    return [{**run.data.params, **run.data.metrics, "run_id": run.info.run_id,
             "start_time": run.info.start_time, KEY_TAG[phase]: run.data.tags.get(KEY_TAG[phase])}
            for run in search_runs(client, exp_id, _filter(phase, "FINISHED"))]


def run_name(cfg: CellCfg, phase: str) -> str:
    """A name that reads as the cell: ``dinov2_vits14 · cifar10 · pgd · 8/255`` (a head:
    ``head · dinov2_vits14 · cifar10``); fine-tuned encoders add their checkpoint's file stem."""
    encoder = cfg.encoder.name + (f" ({Path(cfg.encoder.checkpoint).stem})" if cfg.encoder.checkpoint else "")
    data = f"{cfg.data.name}" + (f" {cfg.data.task}" if cfg.data.task and cfg.data.name == "synthetic" else "")
    if phase == "head":
        return f"head · {encoder} · {data}"
    return f"{encoder} · {data} · {cfg.attack.name} · {cfg.attack.eps * 255:.3g}/255"


class CellRun:
    """One MLflow run for one cell (or head): FINISHED on a clean exit, FAILED on an exception;
    a heartbeat tag is refreshed while it runs (see ``tracking.claims``)."""

    def __init__(self, cfg: CellCfg, phase: str, experiment_id: str, tracking_uri: str,
                 sweep: str = "", session: str = "") -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.cfg, self.phase, self.experiment_id = cfg, phase, experiment_id
        self.tracking_uri = absolute_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.sweep, self.session = sweep, session
        self.run_id = ""
        self.heartbeat: Heartbeat | None = None
        self.closed = False

    @property
    def key(self) -> str:
        return self.cfg.head_id if self.phase == "head" else self.cfg.cell_id

    def __enter__(self) -> "CellRun":
        tags = {"cell_id": self.cfg.cell_id, "head_id": self.cfg.head_id, "phase": self.phase,
                "code_version": code_version(), "sweep": self.sweep, **owner_tags()}
        if self.session:
            tags["sweep_session"] = self.session
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name(self.cfg, self.phase))
        self.run_id = run.info.run_id
        self.heartbeat = Heartbeat(self.tracking_uri, self.run_id)
        try:
            log_params(self.client, self.run_id, cell_params(self.cfg, self.phase))
            self.log_config()
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_heartbeat()
        if not self.closed:
            self.client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")

    def _stop_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    def discard(self, duplicate: bool = False) -> None:
        """Give the run up: deleted before any work, or KILLED with ``claim=duplicate`` after it."""
        self._stop_heartbeat()
        if duplicate:
            self.client.set_tag(self.run_id, CLAIM_TAG, DUPLICATE)
            self.client.set_terminated(self.run_id, "KILLED")
        else:
            self.client.delete_run(self.run_id)
        self.closed = True

    def log_metrics(self, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        log_metrics(self.client, self.run_id, [Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_config(self) -> None:
        """The resolved cell config as ``config.yaml``."""
        text = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
        self.client.log_text(self.run_id, text, "config.yaml")

    def log_file(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dir(self, path: Path, artifact_path: str | None = None) -> None:
        if Path(path).is_dir() and any(Path(path).iterdir()):
            self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def uri(self, artifact: str) -> str:
        return f"runs:/{self.run_id}/{artifact}"
