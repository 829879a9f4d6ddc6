"""One MLflow run per cell or head: params, tags, metrics, artifacts, and the finished-cell lookup."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from ssl_robust.config import CellCfg
from ssl_robust.tracking.store import absolute_tracking_uri, code_version, experiment_id, flatten, search_runs

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


def _filter(phase: str, status: str, key_value: str | None = None) -> str:
    text = f"tags.phase = '{phase}' and attributes.status = '{status}'"
    return text + (f" and tags.{KEY_TAG[phase]} = '{key_value}'" if key_value else "")


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


class CellRun:
    """One MLflow run for one cell (or head): FINISHED on a clean exit, FAILED on an exception."""

    def __init__(self, cfg: CellCfg, phase: str, experiment_id: str, tracking_uri: str,
                 sweep: str = "") -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.cfg, self.phase, self.experiment_id = cfg, phase, experiment_id
        self.client = MlflowClient(absolute_tracking_uri(tracking_uri))
        self.sweep = sweep
        self.run_id = ""

    @property
    def key(self) -> str:
        return self.cfg.head_id if self.phase == "head" else self.cfg.cell_id

    def __enter__(self) -> "CellRun":
        tags = {"cell_id": self.cfg.cell_id, "head_id": self.cfg.head_id, "phase": self.phase,
                "code_version": code_version(), "sweep": self.sweep,
                "host": socket.gethostname(), "pid": str(os.getpid())}
        name = f"{self.phase}-{self.cfg.encoder.name}-{self.cfg.data.name}-{self.key[:8]}"
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in cell_params(self.cfg, self.phase).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.log_config()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")

    def log_metrics(self, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

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
