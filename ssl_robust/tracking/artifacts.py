"""URI -> local file: ``s3://`` through boto3, ``runs:/`` and ``mlflow-artifacts:/`` through MLflow,
``file://`` and plain paths as they are. Remote files are cached per URI."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import boto3
import mlflow.artifacts
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError
from mlflow.exceptions import MlflowException

from ssl_robust.config import CellCfg
from ssl_robust.deacl_config import DeaclCfg
from ssl_robust.errors import ArtifactError
from ssl_robust.tracking.store import absolute_tracking_uri, s3_endpoint
from ssl_robust.uris import missing_store, redact

_REMOTE_SCHEMES = ("runs", "mlflow-artifacts", "models", "http", "https")
_MLFLOW_SCHEMES = ("runs", "models")  # resolved through the tracking store
Config = TypeVar("Config", CellCfg, DeaclCfg)


def _bucket_problem(client: Any, bucket: str) -> str | None:
    """Why ``bucket`` cannot be used (missing, forbidden), or None if it can be reached."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            return f"bucket {bucket!r} does not exist"
        if code in ("403", "AccessDenied", "Forbidden"):
            return f"access to bucket {bucket!r} is denied to these credentials"
    except BotoCoreError:
        return None
    return None


def s3_problem(err: Exception, bucket: str, key: str, client: Any = None) -> str:
    """What a boto3 error means for ``s3://bucket/key``, naming the credential or bucket at fault."""
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None) or "AWS S3"
    if isinstance(err, NoCredentialsError):
        return ("no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                "or run on a machine with an instance profile")
    if isinstance(err, PartialCredentialsError):
        return f"incomplete AWS credentials ({err})"
    if isinstance(err, ClientError):
        error = err.response.get("Error", {})
        code, message = str(error.get("Code", "")), error.get("Message", "")
        if not bucket:
            return f"S3 error {code or type(err).__name__} from {endpoint}: {message}"
        if code in ("404", "NoSuchKey", "NotFound"):
            missing_bucket = _bucket_problem(client, bucket) if client is not None else None
            return missing_bucket or f"key {key!r} does not exist in bucket {bucket!r} ({endpoint})"
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist ({endpoint})"
        if code in ("403", "AccessDenied", "Forbidden"):
            return (f"access denied to key {key!r} in bucket {bucket!r} ({endpoint}) for the configured "
                    "credentials: check AWS_ACCESS_KEY_ID / AWS_PROFILE and the bucket's policy")
        if code == "InvalidAccessKeyId":
            return f"the endpoint {endpoint} does not know this AWS_ACCESS_KEY_ID"
        if code == "SignatureDoesNotMatch":
            return "AWS_SECRET_ACCESS_KEY does not match AWS_ACCESS_KEY_ID"
        return f"S3 error {code or type(err).__name__} from {endpoint}: {message}"
    return f"S3 endpoint {endpoint}: {err} (AWS_ENDPOINT_URL_S3 / MLFLOW_S3_ENDPOINT_URL)"


def _cache_dir(uri: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ssl_robust" / "artifacts"
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


def s3_client() -> Any:
    """boto3 S3 client for ``AWS_ENDPOINT_URL_S3`` / ``MLFLOW_S3_ENDPOINT_URL`` (or AWS itself)."""
    return boto3.session.Session().client("s3", endpoint_url=s3_endpoint())  # credentials read now, not cached


def _download(uri: str, dst: Path, tracking_uri: str | None) -> Path:
    """Download into a temporary folder beside ``dst`` then move it in (safe for parallel trials)."""
    parsed = urlparse(uri)
    name = Path(parsed.path).name or "artifact"
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dst) as tmp:
        if parsed.scheme == "s3":
            got = Path(tmp) / name
            bucket, key = parsed.netloc, parsed.path.lstrip("/")
            client = s3_client()
            try:
                client.download_file(bucket, key, str(got))
            except (BotoCoreError, ClientError) as err:
                raise ArtifactError(f"artifact {uri}: {s3_problem(err, bucket, key, client)}") from err
        else:
            uri_abs = absolute_tracking_uri(tracking_uri)
            try:
                got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                               tracking_uri=uri_abs))
            except MlflowException as err:
                raise ArtifactError(f"artifact {uri}: {err.message} (tracking URI {redact(uri_abs)})") from err
            except (BotoCoreError, ClientError) as err:
                raise ArtifactError(f"artifact {uri}: the tracking store's S3 artifact store failed: "
                                    f"{s3_problem(err, '', '')} (tracking URI {redact(uri_abs)})") from err
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
    if cached.exists():
        return cached
    if parsed.scheme in _MLFLOW_SCHEMES:
        _require_store(uri, absolute_tracking_uri(tracking_uri))
    created = not dst.exists()
    try:
        return _download(uri, dst, tracking_uri)
    except ArtifactError:
        if created:
            with contextlib.suppress(OSError):
                dst.rmdir()  # only if empty: a parallel trial may be downloading into it
        raise


def _require_store(uri: str, tracking_uri: str) -> None:
    """ArtifactError unless a SQLite tracking store exists (MLflow would create an empty one)."""
    database = missing_store(tracking_uri)
    if database is not None:
        raise ArtifactError(f"artifact {uri}: no MLflow tracking store at {database}; give the store that "
                            "holds the run with --tracking-uri or MLFLOW_TRACKING_URI")


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
