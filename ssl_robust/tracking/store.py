"""The MLflow store: tracking URIs, experiments, code version, flattened params and paged search."""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from ssl_robust.uris import SQLITE, absolute_sqlite


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def absolute_tracking_uri(uri: str | None = None) -> str:
    """A tracking URI that means the same from any working directory (trials run in their own)."""
    uri = uri or default_tracking_uri()
    if uri.startswith(SQLITE):
        return absolute_sqlite(uri)
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


def is_local_store(tracking_uri: str) -> bool:
    """True for a store that is a file on this machine (``sqlite:``, ``file:``), not a server."""
    return tracking_uri.startswith(("sqlite:", "file:"))


@contextlib.contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite database (no-op for other stores): MLflow creates a
    fresh database's schema on first use, and two processes doing so at once crash."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# MLflow 3 opens an experiment on its GenAI overview unless it is marked as model development;
# then the UI opens on the runs table, where cells compare side by side.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as an experiment's description


def ensure_experiment(name: str, tracking_uri: str, description: str = "") -> str:
    """Id of the experiment ``name``, created (or restored) if needed; safe when several processes
    open a fresh store or create the same experiment at once. Call it in the driver. A
    ``description`` (a sweep's) becomes the experiment's description in the MLflow UI."""
    tags = {**EXPERIMENT_TAGS, **({DESCRIPTION_TAG: description} if description else {})}
    with store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=_local_artifact_root(tracking_uri, name),
                                                tags=tags)
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        for key, value in tags.items():
            if exp.tags.get(key) != value:
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id


def _local_artifact_root(tracking_uri: str, name: str) -> str | None:
    """Artifacts of a SQLite store go beside its database file (MLflow's default is the working
    directory's ``./mlruns``); a server decides for itself (None)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / "mlruns" / name).as_uri()


UI_PORT = 5000  # ``mlflow ui``'s default port
RUNS_VIEW = "workflowType=machine_learning"  # MLflow 3's UI: the experiment's runs table, not its GenAI overview


def runs_page(server_url: str, experiment_id: str) -> str:
    """The address of an experiment's runs table in the MLflow UI served at ``server_url``."""
    return f"{server_url.rstrip('/')}/#/experiments/{experiment_id}?{RUNS_VIEW}"


def experiment_id(client: MlflowClient, experiment: str) -> str | None:
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


def s3_endpoint() -> str | None:
    """The S3 endpoint of ``AWS_ENDPOINT_URL_S3`` or ``MLFLOW_S3_ENDPOINT_URL`` (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` in as many ``log_batch`` requests as MLflow's per-request limit needs."""
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=items[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """Log ``metrics`` in as many ``log_batch`` requests as MLflow's per-request limit needs."""
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])


def search_runs(client: MlflowClient, experiment_id: str, filter_string: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def experiment_names(tracking_uri: str | None = None) -> list[str]:
    """The names of the store's active experiments, sorted (not MLflow's own ``Default``)."""
    client = MlflowClient(absolute_tracking_uri(tracking_uri))
    return sorted(exp.name for exp in client.search_experiments() if exp.experiment_id != "0")
