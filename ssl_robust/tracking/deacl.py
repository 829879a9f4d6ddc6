"""One MLflow run per DeACL fine-tune (tag ``phase=deacl``): params, per-epoch metrics with
``step`` = epoch, checkpoints as artifacts, and resume of an unfinished run from its last checkpoint.

``DeaclRun`` provides the hooks ``deacl.fine_tune`` calls (``on_epoch``, ``on_checkpoint``,
``resume_state``) without importing it.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import mlflow.artifacts
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.deacl_names import CHECKPOINTS, student_artifact
from ssl_robust.tracking.store import (absolute_tracking_uri, code_version, ensure_experiment, experiment_id,
                                       flatten, log_params, search_runs)

PHASE = "deacl"
RESUME_ARTIFACT = "resume/resume.pt"
ENCODER_ARTIFACT = "encoder.yaml"


def deacl_runs(experiment: str, tracking_uri: str | None = None, status: str | None = None,
               deacl_id: str | None = None) -> list[Any]:
    """The experiment's DeACL runs (optionally of one status and one config), oldest first."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = experiment_id(client, experiment)
    if exp_id is None:
        return []
    text = f"tags.phase = '{PHASE}'"
    text += f" and attributes.status = '{status}'" if status else ""
    text += f" and tags.deacl_id = '{deacl_id}'" if deacl_id else ""
    return sorted(search_runs(client, exp_id, text), key=lambda r: r.info.start_time or 0)


def student_encoder(run: Any, epoch: int) -> dict[str, Any]:
    """The encoder config (a dict) of a DeACL run's student at ``epoch``; epoch 0 is the teacher. A
    student's checkpoint holds plain timm weights: the teacher's ``checkpoint_key`` does not apply."""
    encoder = yaml.safe_load(run.data.params.get("encoder_config", "{}")) or {}
    if epoch > 0:
        encoder["checkpoint"] = f"runs:/{run.info.run_id}/{student_artifact(epoch)}"
        encoder.pop("checkpoint_key", None)
    return encoder


def checkpoint_epochs(run: Any) -> list[int]:
    """The epochs a DeACL run wrote checkpoints at (0, the teacher, is always available)."""
    epochs, every = int(run.data.params["epochs"]), int(run.data.params["checkpoint_every"])
    return sorted({0, epochs, *range(every, epochs + 1, every)})


def deacl_students(runs: list[str], experiment: str | None, epochs: list[int],
                   tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Encoder configs of the students of DeACL runs (by id, or every FINISHED one of an
    experiment) at ``epochs``; LookupError naming what is missing."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    found = [client.get_run(run_id) for run_id in runs] if runs else \
        deacl_runs(experiment or "", tracking_uri, "FINISHED")
    if not found:
        raise LookupError(f"no FINISHED DeACL run in experiment {experiment!r}")
    students = []
    for run in found:
        if run.data.tags.get("phase") != PHASE or run.info.status != "FINISHED":
            raise LookupError(f"run {run.info.run_id} is not a FINISHED DeACL run")
        missing = sorted(set(epochs) - set(checkpoint_epochs(run)))
        if missing:
            raise LookupError(f"epochs {missing}: run {run.info.run_id} has checkpoints at {checkpoint_epochs(run)}")
        students += [student_encoder(run, epoch) for epoch in epochs]
    return students


class DeaclRun:
    """The MLflow run of one fine-tune; reopens the newest unfinished run of the same config."""

    def __init__(self, cfg: DeaclCfg, tracking_uri: str | None = None, experiment: str | None = None,
                 tags: dict[str, str] | None = None,
                 report: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.cfg, self.uri = cfg, absolute_tracking_uri(tracking_uri)
        self.experiment = experiment or cfg.name
        self.client = MlflowClient(self.uri)
        self.tags, self.report = tags or {}, report
        self.run_id, self.resumed, self.logged_epochs = "", False, -1
        self._downloads = tempfile.TemporaryDirectory(prefix="deacl-resume-")

    def finished(self) -> str | None:
        """The run id of a FINISHED fine-tune of this config, if one exists."""
        done = deacl_runs(self.experiment, self.uri, "FINISHED", self.cfg.deacl_id)
        return done[0].info.run_id if done else None

    def __enter__(self) -> "DeaclRun":
        exp_id = ensure_experiment(self.experiment, self.uri)
        unfinished = [r for r in deacl_runs(self.experiment, self.uri, deacl_id=self.cfg.deacl_id)
                      if r.info.status != "FINISHED"]
        if unfinished:
            self.run_id, self.resumed = unfinished[-1].info.run_id, True
            self.client.update_run(self.run_id, status="RUNNING")
            history = self.client.get_metric_history(self.run_id, "probe/embed_acc")
            self.logged_epochs = max((m.step for m in history), default=-1)
            return self
        tags = {"phase": PHASE, "deacl_id": self.cfg.deacl_id, "code_version": code_version(), **self.tags}
        run = self.client.create_run(exp_id, tags=tags, run_name=f"deacl-{self.cfg.encoder.name}-"
                                                                  f"{self.cfg.deacl_id[:8]}")
        self.run_id = run.info.run_id
        encoder = self.cfg.encoder.model_dump(mode="json", exclude_unset=True)  # the teacher, as configured
        params = {**flatten(self.cfg.model_dump(mode="json")),
                  "encoder_config": yaml.safe_dump(encoder, default_flow_style=True).strip()}
        log_params(self.client, self.run_id, params)
        self.client.log_text(self.run_id, yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False),
                             "config.yaml")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")
        self._downloads.cleanup()

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Per-epoch metrics with ``step`` = epoch; epochs logged before a resume are not repeated."""
        if epoch > self.logged_epochs:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()])
        if self.report is not None:
            self.report(epoch, metrics)

    def on_checkpoint(self, epoch: int, weights_path: Path, resume_path: Path) -> None:
        self.client.log_artifact(self.run_id, str(weights_path), CHECKPOINTS)
        self.client.log_artifact(self.run_id, str(resume_path), str(Path(RESUME_ARTIFACT).parent))
        self.client.log_batch(self.run_id, tags=[RunTag("last_checkpoint_epoch", str(epoch))])

    def resume_state(self) -> Path | None:
        """The last resume file of the reopened run, downloaded; None for a new run."""
        if not self.resumed or "last_checkpoint_epoch" not in self.client.get_run(self.run_id).data.tags:
            return None
        return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=RESUME_ARTIFACT,
                                                        dst_path=self._downloads.name, tracking_uri=self.uri))
