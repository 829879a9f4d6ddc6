"""infra/: the Ray cluster config against Ray's own schema, and no secrets in what ships."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import ray
import yaml

from tests.helpers import REPO_ROOT

CLUSTER = REPO_ROOT / "infra" / "cluster.yaml"


def test_cluster_yaml_validates_against_ray_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(CLUSTER.read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    gpu = config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]
    assert gpu.startswith(("g5.", "g6.", "p3.", "p4", "p5."))
    setup = " ".join(config["setup_commands"])
    assert "pip install" in setup and "ssl_robust" in setup and "cluster.env" in setup


def test_no_secrets_in_infra_files() -> None:
    for path in (REPO_ROOT / "infra").iterdir():
        text = path.read_text().lower()
        assert "akia" not in text, path  # an AWS access key id
        for line in text.splitlines():
            assert not line.strip().startswith(("aws_secret_access_key:", "aws_secret_access_key=")), path


def test_cluster_env_takes_settings_not_keys_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
           "AWS_ENDPOINT_URL_S3": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "do-not-copy"}
    subprocess.run([str(REPO_ROOT / "infra" / "cluster_env.sh")], env=env, check=True,
                   capture_output=True)
    written = (tmp_path / ".ssl_robust" / "cluster.env").read_text()
    assert "MLFLOW_TRACKING_URI=http://mlflow.internal:5000" in written
    assert "AWS_ENDPOINT_URL_S3=http://minio:9000" in written
    assert "do-not-copy" not in written
    assert oct((tmp_path / ".ssl_robust" / "cluster.env").stat().st_mode & 0o777) == "0o600"
