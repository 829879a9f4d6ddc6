"""Sweep fixtures: tiny sweep configs, and one real stack per session (S3 endpoint + MLflow server
started by infra/local_stack.sh on free loopback ports) plus a real local Ray instance per module."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
BUCKET = "sweep-tests"
TINY_ENCODERS = [
    {"name": "dinov2_vits14", "pretrained": False, "image_size": 28,
     "model_kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 2, "init_values": 1.0}},
    {"name": "dino_vitb16", "pretrained": False, "image_size": 32,
     "model_kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 2}},
]


def tiny_sweep(name: str, **fields: Any) -> dict[str, Any]:
    """A small sweep on synthetic classification with tiny random-init encoders."""
    base: dict[str, Any] = {
        "name": name,
        "encoders": TINY_ENCODERS,
        "datasets": [{"name": "synthetic", "task": "classification", "n_train": 64, "n_val": 32}],
        "attacks": ["embed", "pgd"],
        "eps": [0, "8/255"],
        "steps": [3],
        "head": {"epochs": 2},
        "n_samples": 16,
        "device": "cpu",
        "resources": {"cpu": 1},
        "max_failures": 1,
    }
    return {**base, **fields}


def write_sweep(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Dummy AWS keys in the environment, a moto S3 server and an `mlflow server` (light mode,
    SQLite, artifacts proxied to s3://BUCKET) on loopback; yields their URLs."""
    state = tmp_path_factory.mktemp("stack")
    s3_port, mlflow_port = free_port(), free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "sweep-test-key", "AWS_SECRET_ACCESS_KEY": "sweep-test-secret-0123",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
        "RAY_AUTH_MODE": "disabled", "XDG_CACHE_HOME": str(state / "cache"),
    }
    script_env = {**os.environ, **env, "STATE_DIR": str(state), "S3_PORT": str(s3_port),
                  "MLFLOW_PORT": str(mlflow_port), "BUCKET": BUCKET, "PYTHON": sys.executable}
    script = str(REPO_ROOT / "infra" / "local_stack.sh")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
        try:
            subprocess.run([script, "start"], env=script_env, check=True, timeout=180,
                           capture_output=True, text=True)
            yield {"tracking_uri": f"http://127.0.0.1:{mlflow_port}", "bucket": BUCKET,
                   "secret": env["AWS_SECRET_ACCESS_KEY"], "state": str(state)}
        finally:
            subprocess.run([script, "stop"], env=script_env, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def ray_local(stack: dict[str, str]) -> Iterator[None]:
    """A real local Ray instance with 2 CPUs, started after the stack's environment is set."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3(stack: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3")
