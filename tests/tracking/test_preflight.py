"""The preflight of the tracking store and the S3 endpoint: fast, one line naming the URI, nothing written."""
from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from ssl_robust.tracking import PreflightError, fail_fast_env, preflight
from tests.helpers import free_port, sqlite_uri

FAST = 10.0  # seconds: the bound for an unreachable tracking URI
SECRET = "preflight-secret-0123456789"
S3_ERROR = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>no</Message></Error>'


@pytest.fixture
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy AWS keys, no S3 endpoint, no instance metadata lookups, no MLflow credentials."""
    for name in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_AUTH", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                 "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "preflight-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none" / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none" / "config"))
    monkeypatch.setenv("BOTO_CONFIG", str(tmp_path / "none" / "boto"))
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture
def fake_server() -> Iterator[Callable[..., str]]:
    """``fake_server(status, body, content_type, health=None)`` -> the URL of a loopback HTTP server
    answering every request that way (``health``: another status for ``/health``)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: str = "", content_type: str = "application/json", health: int | None = None) -> str:
        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                code = health if health is not None and self.path == "/health" else status
                payload = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_HEAD = do_PUT = answer

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def failure(uri: str | None, **kwargs: object) -> tuple[str, float]:
    """The preflight's message and how long it took; fails the test if it passed."""
    start = time.monotonic()
    with pytest.raises(PreflightError) as caught:
        preflight(uri, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message
    return message, time.monotonic() - start


def test_refused_tracking_server_fails_fast(isolated: None) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    message, took = failure(uri)
    assert took < FAST and uri in message and "connection refused" in message


@pytest.mark.slow
def test_blackholed_tracking_server_fails_within_the_timeout(isolated: None) -> None:
    """A listener whose backlog is full drops new SYNs (a blackhole); one connection fills it."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        message, took = failure(uri, timeout_s=2.0)
    assert took < 2.0 + 2.0 and uri in message
    assert "no connection within 2 s" in message or "no answer within 2 s" in message


@pytest.mark.slow
def test_silent_tracking_server_fails_within_the_timeout(isolated: None) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        message, took = failure(uri, timeout_s=2.0)
    assert took < 2.0 + 2.0 and uri in message and "no answer within 2 s" in message


def test_unknown_host_fails_fast(isolated: None) -> None:
    uri = "http://mlflow.preflight.invalid:5000"  # .invalid never resolves (RFC 6761)
    message, took = failure(uri, timeout_s=3.0)
    assert took < FAST and uri in message


def test_credentials_in_the_uri_are_not_shown(isolated: None) -> None:
    port = free_port()
    message, _ = failure(f"http://alice:{SECRET}@127.0.0.1:{port}")
    assert f"http://***@127.0.0.1:{port}" in message


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_name_the_variables(isolated: None, fake_server: Callable[..., str],
                                                status: int) -> None:
    uri = fake_server(status, '{"error_code": "UNAUTHENTICATED"}')
    message, _ = failure(uri)
    assert uri in message and f"HTTP {status}" in message and "MLFLOW_TRACKING_USERNAME" in message


def test_auth_on_the_api_only_is_found(isolated: None, fake_server: Callable[..., str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's basic-auth app leaves /health open; the API call finds refused credentials."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    uri = fake_server(401, "", health=200)
    message, _ = failure(uri)
    assert "POST /api/2.0/mlflow/experiments/search answered HTTP 401" in message and "were refused" in message


@pytest.mark.parametrize(("status", "body", "content_type", "expected"), [
    (404, "", "text/plain", "no MLflow REST API here"),
    (500, "", "text/plain", "HTTP 500"),
    (200, "<html>login</html>", "text/html", "not JSON"),
])
def test_a_server_that_is_not_mlflow_fails(isolated: None, fake_server: Callable[..., str], status: int,
                                           body: str, content_type: str, expected: str) -> None:
    uri = fake_server(status, body, content_type)
    message, _ = failure(uri)
    assert uri in message and expected in message


def test_an_mlflow_like_server_passes(isolated: None, fake_server: Callable[..., str]) -> None:
    preflight(fake_server(200, '{"experiments": []}'))


def test_closed_s3_endpoint_fails_fast(isolated: None, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    message, took = failure(tracking_uri)
    assert took < FAST and f"S3 endpoint {endpoint}: unreachable (connection refused)" in message
    assert "tracking" not in message


@pytest.mark.slow
def test_blackholed_s3_endpoint_fails_within_the_timeout(isolated: None, tracking_uri: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        message, took = failure(tracking_uri, timeout_s=2.0)
    assert took < 2.0 + 2.0 and f"S3 endpoint {endpoint}: unreachable (no answer within 2 s)" in message


def test_a_malformed_s3_endpoint_is_named(isolated: None, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "not a url")
    message, _ = failure(tracking_uri)
    assert "S3 endpoint not a url: Invalid endpoint: not a url" in message


def test_s3_is_checked_only_when_needed(isolated: None, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    preflight(tracking_uri, need_s3=False)
    message, _ = failure(tracking_uri)
    assert "S3 endpoint" in message


def test_both_failures_share_one_line(isolated: None, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, uri = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    message, took = failure(uri)
    assert took < FAST and f"tracking server {uri}" in message and f"S3 endpoint {endpoint}" in message


def test_missing_aws_credentials_are_named(isolated: None, fake_server: Callable[..., str], tracking_uri: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fake_server(200, "", "application/xml"))
    message, _ = failure(tracking_uri)
    assert "no AWS credentials" in message and "AWS_ACCESS_KEY_ID" in message and "instance profile" in message


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch"])
def test_refused_aws_credentials_fail(isolated: None, fake_server: Callable[..., str], tracking_uri: str,
                                      monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    endpoint = fake_server(403, S3_ERROR.format(code=code), "application/xml")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    message, _ = failure(tracking_uri)
    assert f"S3 endpoint {endpoint}: credentials refused (HTTP 403 {code})" in message


def test_access_denied_to_list_buckets_passes(isolated: None, fake_server: Callable[..., str], tracking_uri: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid credentials of a role without s3:ListAllMyBuckets are fine."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", fake_server(403, S3_ERROR.format(code="AccessDenied"),
                                                          "application/xml"))
    preflight(tracking_uri)


def test_sqlite_in_a_missing_folder_fails(isolated: None, tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message, took = failure(sqlite_uri(missing / "mlflow.db"))
    assert took < FAST and f"folder {missing} does not exist" in message and "sqlite:///" in message
    assert not missing.exists()


def test_fine_sqlite_passes_without_creating_the_database(isolated: None, tmp_path: Path, tracking_uri: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    preflight(tracking_uri)
    monkeypatch.chdir(tmp_path)
    preflight(None)
    preflight("sqlite:///relative.db")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_sqlite_fails(isolated: None, tmp_path: Path, tracking_uri: str) -> None:
    (tmp_path / "mlflow.db").write_text("not a database")
    message, _ = failure(tracking_uri)
    assert "is not a SQLite database" in message


def test_fail_fast_env_names_mlflow_variables_and_keeps_a_short_outage() -> None:
    from mlflow import environment_variables

    env = fail_fast_env()
    for name, value in env.items():
        variable = getattr(environment_variables, name)
        assert variable.name == name and variable.type(value) >= 0
    retries = int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = int(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    sleeps = sum(factor * 2 ** (n - 1) for n in range(2, retries + 1))  # urllib3: no sleep before the 1st retry
    assert 20 < sleeps <= 60


@pytest.mark.services
@pytest.mark.slow
def test_the_local_stack_passes(stack: dict[str, str]) -> None:
    start = time.monotonic()
    preflight(stack["tracking_uri"])
    preflight(stack["tracking_uri"], need_s3=True)
    assert time.monotonic() - start < FAST
    message, _ = failure(stack["tracking_uri"] + "/nope")
    assert "no MLflow REST API here" in message
