"""A fast check of the tracking store and the S3 endpoint before Ray starts: a few seconds, and one
line that names the URI and what failed (left to its own retries MLflow takes ~4 minutes).

Checks run in parallel, each bounded by ``timeout_s`` even where a socket call has no timeout
(name resolution), and write nothing: a SQLite database is never created here. A failing call
returns within ``timeout_s`` + 1 s whatever the machine's load: the clients' libraries are imported
with this module (a fresh environment compiles botocore's bytecode on first import, seconds on a busy
machine) and the S3 client is built before the clock starts.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import boto3
import requests
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import PartialCredentialsError, ReadTimeoutError, SSLError
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from ssl_robust.errors import PreflightError
from ssl_robust.tracking.store import absolute_tracking_uri, s3_endpoint
from ssl_robust.uris import redact, sqlite_file

# ~30 s of retries (sleeps 0, 2, 4, 8, 16 s plus jitter) so that a 20-s outage is still absorbed,
# instead of MLflow's 7 retries with factor 2 (~4 minutes); 60 s per request instead of 120.
_FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # the commands print their own progress
}
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_SQLITE_HEADER = b"SQLite format 3\x00"
_API_PROBE = "/api/2.0/mlflow/experiments/search"
_SOCKET_REASONS = (
    ("refused", "connection refused"),
    ("name or service not known", "host name not found"),
    ("failed to resolve", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("name resolution", "host name not found"),
    ("getaddrinfo failed", "host name not found"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
    ("connection reset", "connection reset by the server"),
)


class _Failed(Exception):
    """What failed, without the URI (the caller names it)."""


@dataclass(frozen=True)
class _Budget:
    """The preflight's timeout and when it ends."""

    total: float
    deadline: float

    def left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())


def fail_fast_env() -> dict[str, str]:
    """MLflow client settings for ``os.environ.setdefault`` (a user's values win): HTTP retries and
    timeouts that fail fast, and no per-download progress bars."""
    return dict(_FAIL_FAST_ENV)


def preflight(tracking_uri: str | None, timeout_s: float = 5.0, need_s3: bool | None = None) -> None:
    """Raise PreflightError within about ``timeout_s`` if the tracking store (server, SQLite file,
    database) or, when ``need_s3`` (None: when an S3 endpoint variable is set), S3 is not usable."""
    uri = absolute_tracking_uri(tracking_uri)
    checks: list[tuple[str, Callable[[_Budget], None]]] = [(_tracking_label(uri), lambda b: _check_tracking(uri, b))]
    endpoint = s3_endpoint()
    if need_s3 or (need_s3 is None and endpoint):
        label = f"S3 endpoint {redact(endpoint)}" if endpoint else "S3 (AWS default endpoint)"
        checks.append((label, _s3_check(endpoint, timeout_s)))
    failures = _run_bounded(checks, timeout_s)
    if failures:
        raise PreflightError(redact("; ".join(failures)).replace("\n", " "))


def _tracking_label(uri: str) -> str:
    kind = "tracking server" if uri.startswith(("http://", "https://")) else "tracking store"
    return f"{kind} {redact(uri)}"


def _run_bounded(checks: list[tuple[str, Callable[[_Budget], None]]], timeout_s: float) -> list[str]:
    """Run the checks in daemon threads; ``label: reason`` of each that failed or did not finish."""
    budget = _Budget(timeout_s, time.monotonic() + timeout_s)
    outcomes: dict[str, str | None] = {}

    def run(label: str, check: Callable[[_Budget], None]) -> None:
        try:
            check(budget)
            outcomes[label] = None
        except _Failed as err:
            outcomes[label] = str(err)
        except Exception as err:  # anything unforeseen still ends in one line
            outcomes[label] = f"{type(err).__name__}: {_first_line(err)}"

    threads = [threading.Thread(target=run, args=check, daemon=True, name="preflight") for check in checks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, budget.deadline + 1.0 - time.monotonic()))
    failures = []
    for label, _ in checks:
        if label not in outcomes:
            failures.append(f"{label}: no answer within {timeout_s:g} s")
        elif outcomes[label] is not None:
            failures.append(f"{label}: {outcomes[label]}")
    return failures


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _socket_reason(text: str, timeout_s: float | None = None) -> str:
    lowered = text.lower()
    for needle, reason in _SOCKET_REASONS:
        if needle in lowered:
            return reason
    if "timed out" in lowered or "timeout" in lowered:
        return "timed out" if timeout_s is None else f"no answer within {timeout_s:g} s"
    return text.strip().splitlines()[0][:300] if text.strip() else "cannot connect"


def _check_tracking(uri: str, budget: _Budget) -> None:
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("http", "https"):
        _check_server(uri, budget)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme == "file":
        _check_folder(Path(unquote(urlparse(uri).path)))
    elif scheme in _DB_PORTS:
        _check_tcp(uri, _DB_PORTS[scheme], budget)


def _check_server(uri: str, budget: _Budget) -> None:
    """GET /health (reachable), then one read-only API call with MLflow's own credentials."""

    creds = get_default_host_creds(uri)
    health = _http(creds, "/health", "GET", budget)
    _refuse_auth(health, creds, "GET /health")
    if health.status_code != 200 and health.status_code != 404:  # 404: /health not routed by a proxy
        raise _Failed(f"GET /health answered HTTP {health.status_code} {health.reason}")
    api = _http(creds, _API_PROBE, "POST", budget, json={"max_results": 1})
    _refuse_auth(api, creds, f"POST {_API_PROBE}")
    if api.status_code == 404:
        raise _Failed(f"no MLflow REST API here (POST {_API_PROBE}: HTTP 404); check the URI")
    if api.status_code != 200:
        raise _Failed(f"POST {_API_PROBE} answered HTTP {api.status_code} {api.reason}")
    if "json" not in api.headers.get("Content-Type", ""):
        raise _Failed(f"POST {_API_PROBE} answered {api.headers.get('Content-Type') or 'no content type'}, "
                      "not JSON (a login page of a proxy?); check the URI and credentials")


def _http(creds: Any, endpoint: str, method: str, budget: _Budget, **kwargs: Any) -> Any:
    """One attempt, no retries, bounded by the deadline; network errors -> _Failed."""

    try:
        return http_request(creds, endpoint, method, max_retries=0, backoff_factor=0, backoff_jitter=0,
                            retry_codes=frozenset(), timeout=budget.left(), raise_on_status=False, **kwargs)
    except Exception as err:
        raise _Failed(_request_reason(err, budget.total)) from None


def _request_reason(err: BaseException, timeout_s: float) -> str:

    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for cause in chain:
        if isinstance(cause, requests.exceptions.SSLError):
            return ("TLS error (set MLFLOW_TRACKING_SERVER_CERT_PATH to the server's CA bundle, "
                    f"or MLFLOW_TRACKING_INSECURE_TLS=true): {_first_line(cause)}")
        if isinstance(cause, requests.exceptions.ConnectTimeout):
            return f"no connection within {timeout_s:g} s"
        if isinstance(cause, requests.exceptions.ReadTimeout):
            return f"connected, but no answer within {timeout_s:g} s"
        if isinstance(cause, requests.exceptions.RequestException):
            return _socket_reason(str(cause), timeout_s)
    return _first_line(err)


def _refuse_auth(response: Any, creds: Any, request: str) -> None:
    if response.status_code not in (401, 403):
        return
    if creds.username or creds.token or creds.auth or creds.aws_sigv4:
        hint = "the credentials MLflow found (MLFLOW_TRACKING_USERNAME/PASSWORD, MLFLOW_TRACKING_TOKEN, " \
               "~/.mlflow/credentials) were refused"
    else:
        hint = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    raise _Failed(f"{request} answered HTTP {response.status_code} {response.reason}: {hint}")


def _check_sqlite(uri: str) -> None:
    """The database's folder exists and is writable; an existing file is a writable SQLite file."""
    path = sqlite_file(uri)
    if path is None:  # sqlite:// is an in-memory database
        return
    folder = path.parent
    if not folder.is_dir():
        raise _Failed(f"folder {folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _Failed(f"folder {folder} is not writable (SQLite writes its journal beside the database)")
    if not path.exists():
        return
    if not path.is_file():
        raise _Failed(f"{path} is not a file")
    if not os.access(path, os.R_OK | os.W_OK):
        raise _Failed(f"database file {path} is not readable and writable")
    with path.open("rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if header and header != _SQLITE_HEADER:
        raise _Failed(f"{path} is not a SQLite database")


def _check_folder(path: Path) -> None:
    """A file store: the folder, or the nearest existing folder above it, is writable."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _Failed(f"{existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _Failed(f"folder {existing} is not writable")


def _check_tcp(uri: str, default_port: int, budget: _Budget) -> None:
    """A database server: its port accepts a connection."""
    parsed = urlparse(uri)
    if not parsed.hostname:
        return
    try:
        with socket.create_connection((parsed.hostname, parsed.port or default_port), timeout=budget.left()):
            pass
    except OSError as err:
        raise _Failed(f"database unreachable ({_socket_reason(str(err), budget.total)})") from None


def _s3_check(endpoint: str | None, timeout_s: float) -> Callable[[_Budget], None]:
    """The S3 check, its client made before the preflight's clock starts: loading botocore's
    service model can take a second on a busy machine, which must not eat the request's time."""

    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                    retries={"total_max_attempts": 1, "mode": "standard"})
    try:
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
    except ValueError as err:  # a malformed endpoint URL
        reason = _first_line(err)

        def malformed(budget: _Budget) -> None:
            raise _Failed(reason)

        return malformed
    return lambda budget: _check_s3(client, budget)


def _check_s3(client: Any, budget: _Budget) -> None:
    """One unretried ListBuckets: the endpoint answers and accepts the credentials. AccessDenied
    passes (the credentials are valid; listing all buckets is not granted to every role)."""

    try:
        client.list_buckets(MaxBuckets=1)
    except NoCredentialsError:
        raise _Failed("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                      "or run where an instance profile or IAM role provides them") from None
    except PartialCredentialsError as err:
        raise _Failed(f"incomplete AWS credentials from {err.kwargs.get('provider')}: "
                      f"{err.kwargs.get('cred_var')} is missing") from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise _Failed(f"unreachable (no answer within {budget.total:g} s)") from None
    except SSLError as err:
        raise _Failed(f"TLS error: {_socket_reason(str(err.kwargs.get('error', '')))}") from None
    except BotoConnectionError as err:
        raise _Failed(f"unreachable ({_socket_reason(str(err.kwargs.get('error', err)), budget.total)})") from None
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "AccessDenied":
            return
        if status in (401, 403):
            raise _Failed(f"credentials refused (HTTP {status} {code}): check AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, AWS_SESSION_TOKEN)") from None
        raise _Failed(f"ListBuckets answered HTTP {status} {code}") from None
