"""URI -> local file: ``s3://`` through boto3, ``runs:/`` and ``mlflow-artifacts:/`` through MLflow,
``file://`` and plain paths as they are. Remote files are cached per URI."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import boto3
import mlflow.artifacts

from ssl_robust.config import CellCfg, DeaclCfg
from ssl_robust.tracking.store import absolute_tracking_uri

_REMOTE_SCHEMES = ("runs", "mlflow-artifacts", "models", "http", "https")
Config = TypeVar("Config", CellCfg, DeaclCfg)


def _cache_dir(uri: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ssl_robust" / "artifacts"
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


def s3_client() -> Any:
    """boto3 S3 client for ``AWS_ENDPOINT_URL_S3`` / ``MLFLOW_S3_ENDPOINT_URL`` (or AWS itself)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _download(uri: str, dst: Path, tracking_uri: str | None) -> Path:
    """Download into a temporary folder beside ``dst`` then move it in (safe for parallel trials)."""
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


def localize(cfg: Config, tracking_uri: str | None = None) -> Config:
    """The config (a cell or a DeACL fine-tune) with its encoder and head checkpoint URIs resolved
    to local files (at the edge: the CLI command or the Tune trial, with the sweep's tracking URI)."""
    updates: dict[str, Any] = {}
    for part in ("encoder", "head"):
        section = getattr(cfg, part, None)
        if section is not None and section.checkpoint:
            local = local_path(section.checkpoint, tracking_uri=tracking_uri)
            updates[part] = section.model_copy(update={"checkpoint": str(local)})
    return cfg.model_copy(update=updates)
