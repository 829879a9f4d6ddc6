"""The only MLflow/boto3 code: experiments, one run per cell, artifacts, finished-cell lookup.

Local default: ``sqlite:///<abs cwd>/mlflow.db`` with artifacts on local disk. Production:
``MLFLOW_TRACKING_URI`` names a server whose artifact store is S3 (``MLFLOW_S3_ENDPOINT_URL`` or
``AWS_ENDPOINT_URL_S3`` for MinIO or any endpoint). Credentials come only from the standard AWS
environment and are never logged.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from ssl_robust.config import CellCfg


PHASES = ("head", "attack")
KEY_TAG = {"head": "head_id", "attack": "cell_id"}
HEAD_ARTIFACT = "head/head.safetensors"
_REMOTE_SCHEMES = ("runs", "mlflow-artifacts", "models", "http", "https")


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def absolute_tracking_uri(uri: str | None = None) -> str:
    """A tracking URI that means the same from any working directory (trials run in their own)."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path)).resolve().as_uri()
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        version = metadata.version("ssl_robust")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{sha}" if sha else version


def ensure_experiment(name: str, tracking_uri: str) -> str:
    """Id of the experiment ``name``, created (or restored) if needed. Call it in the driver."""
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=_local_artifact_root(tracking_uri, name))
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def _local_artifact_root(tracking_uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store go beside its database file (MLflow's default is the working
    directory's ``./mlruns``); a server decides for itself (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / "mlruns" / name).as_uri()


def _experiment_id(client: MlflowClient, experiment: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    return experiment if experiment.isdigit() else None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b": "value"}`` with string values (MLflow params)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = "" if value is None else str(value)
    return flat


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


def _search(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _filter(phase: str, status: str, key_value: str | None = None) -> str:
    text = f"tags.phase = '{phase}' and attributes.status = '{status}'"
    return text + (f" and tags.{KEY_TAG[phase]} = '{key_value}'" if key_value else "")


def finished_runs(experiment: str, phase: str = "attack", tracking_uri: str | None = None,
                  key_value: str | None = None) -> dict[str, str]:
    """``{cell_id or head_id: run_id}`` of FINISHED runs of one phase (oldest run wins)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = _experiment_id(client, experiment)
    if exp_id is None:
        return {}
    found: dict[str, str] = {}
    runs = sorted(_search(client, exp_id, _filter(phase, "FINISHED", key_value)),
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
    exp_id = _experiment_id(client, experiment)
    if exp_id is None:
        return []
    stale = [r.info.run_id for r in _search(client, exp_id, _filter(phase, "RUNNING", key_value))]
    for run_id in stale:
        client.set_terminated(run_id, "FAILED")
    return stale


def run_results(experiment: str, phase: str = "attack", tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Params, metrics and run id of every FINISHED run of a phase (one row each)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    exp_id = _experiment_id(client, experiment)
    if exp_id is None:
        return []
    return [{**run.data.params, **run.data.metrics, "run_id": run.info.run_id,
             KEY_TAG[phase]: run.data.tags.get(KEY_TAG[phase])}
            for run in _search(client, exp_id, _filter(phase, "FINISHED"))]


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


def _cache_dir(uri: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ssl_robust" / "artifacts"
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


def s3_client() -> Any:
    """boto3 S3 client for ``AWS_ENDPOINT_URL_S3`` / ``MLFLOW_S3_ENDPOINT_URL`` (or AWS itself)."""
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _download(uri: str, dst: Path, tracking_uri: str | None) -> Path:
    """Download into a temporary folder beside ``dst`` then move it in (safe for parallel trials)."""
    import mlflow.artifacts

    parsed = urlparse(uri)
    name = Path(parsed.path).name or "artifact"
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst) as tmp:
        if parsed.scheme == "s3":
            got = Path(tmp) / name
            s3_client().download_file(parsed.netloc, parsed.path.lstrip("/"), str(got))
        else:
            uri_abs = absolute_tracking_uri(tracking_uri) if tracking_uri else None
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                           tracking_uri=uri_abs))
        target = dst / got.name
        if got.is_file():
            os.replace(got, target)
        elif not target.exists():
            shutil.move(str(got), str(target))
    return target


def local_path(uri: str, dst_dir: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A local path for ``s3://``, ``runs:/``, ``mlflow-artifacts:/``, ``file://`` or a plain path.

    Remote artifacts are downloaded once into ``dst_dir`` (default: a per-URI cache folder).
    """
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path) if parsed.scheme else uri).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"artifact {uri!r} does not exist")
        return path
    if parsed.scheme != "s3" and parsed.scheme not in _REMOTE_SCHEMES:
        raise ValueError(f"unsupported artifact URI {uri!r}; use s3://, runs:/, "
                         "mlflow-artifacts:/, file:// or a local path")
    dst = Path(dst_dir) if dst_dir is not None else _cache_dir(uri)
    cached = dst / (Path(parsed.path).name or "artifact")
    return cached if cached.exists() else _download(uri, dst, tracking_uri)


def localize(cfg: CellCfg, tracking_uri: str | None = None) -> CellCfg:
    """The cell with its encoder and head checkpoint URIs resolved to local files (at the edge:
    the CLI command or the Tune trial, with the sweep's tracking URI)."""
    updates: dict[str, Any] = {}
    for part in ("encoder", "head"):
        section = getattr(cfg, part)
        if section.checkpoint:
            local = local_path(section.checkpoint, tracking_uri=tracking_uri)
            updates[part] = section.model_copy(update={"checkpoint": str(local)})
    return cfg.model_copy(update=updates)
