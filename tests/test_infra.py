"""infra/: the Ray cluster config against Ray's own schema, and no secrets in what ships."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from tests.helpers import REPO_ROOT, free_port

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


def _cluster() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


def _tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [line for line in listed.stdout.splitlines() if (REPO_ROOT / line).is_file()]


def _rsync_args(options: dict) -> list[str]:
    """The filter arguments Ray's launcher passes to rsync for these options."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    return SSHCommandRunner._create_rsync_filter_args(None, options)


def _sync(source: Path, target: Path) -> set[str]:
    """Sync ``source`` the way ``ray up`` syncs the repository (a directory gets a trailing slash)."""
    rsync = shutil.which("rsync")
    assert rsync, "rsync is not installed (Debian's rsync; .ci/run installs it)"
    subprocess.run([rsync, "-a", *_rsync_args({"rsync_exclude": _cluster()["rsync_exclude"]}),
                    f"{source}/", f"{target}/"], check=True, capture_output=True)
    return {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}


def test_cluster_sync_keeps_every_tracked_file_and_drops_local_state(tmp_path: Path) -> None:
    source, tracked = tmp_path / "checkout", _tracked_files()
    local_state = [".venv/bin/python", "data/cifar10/batch", "mlflow.db", "mlruns/0/meta.yaml",
                   "ray_results/x/result.json", "ssl_robust/__pycache__/cell.cpython-311.pyc"]
    for name in tracked + local_state:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(name)
    synced = _sync(source, tmp_path / "node")
    assert any(name.startswith("ssl_robust/data/") for name in tracked)
    assert sorted(set(tracked) - synced) == []
    assert sorted(set(local_state) & synced) == []


def test_an_unanchored_data_exclude_would_drop_the_data_package(tmp_path: Path) -> None:
    """The check above can fail: ``**/data`` matches ssl_robust/data/ at any depth."""
    (tmp_path / "src" / "ssl_robust" / "data").mkdir(parents=True)
    (tmp_path / "src" / "ssl_robust" / "data" / "base.py").write_text("")
    args = _rsync_args({"rsync_exclude": ["**/data"]})
    subprocess.run(["rsync", "-a", *args, f"{tmp_path / 'src'}/", f"{tmp_path / 'dst'}/"], check=True)
    assert not (tmp_path / "dst" / "ssl_robust" / "data" / "base.py").exists()


def _node_shell_auth_mode(home: Path, setup: list[str]) -> str:
    """Run ``setup`` on a node whose home is ``home``, then ask a shell started the way Ray's launcher
    starts every command (``ray start``, ``ray submit``'s driver, ``ray exec``) which mode a Ray
    process there would use."""
    from ray.autoscaler._private.command_runner import _with_interactive

    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    for command in setup:
        subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True)
    probe = home / "auth_mode.py"
    probe.write_text("from ray._private.authentication.authentication_token_setup import "
                     "maybe_enable_token_auth_if_token_available as token_on\n"
                     "print('token' if token_on(False) else 'disabled')\n")
    remote = " ".join(_with_interactive(f"{sys.executable} {probe}"))  # the line ssh hands the node's shell
    done = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split()[-1]


def _home_with_leftover_token(home: Path) -> Path:
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("left-by-an-earlier-local-ray-init")
    (home / ".bashrc").write_text("")
    return home


def test_every_node_shell_uses_one_ray_auth_mode_despite_a_leftover_token(tmp_path: Path) -> None:
    config = _cluster()
    bashrc_setup = [c for c in config["setup_commands"] if "~/.bashrc" in c and "pip" not in c]
    assert _node_shell_auth_mode(_home_with_leftover_token(tmp_path / "node"), bashrc_setup) == "disabled"
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE" not in starts  # one setting, in the shell every command shares


def test_without_the_setting_a_leftover_token_turns_token_auth_on(tmp_path: Path) -> None:
    """The check above can fail: a node shell without ``RAY_AUTH_MODE`` follows the leftover token."""
    assert _node_shell_auth_mode(_home_with_leftover_token(tmp_path / "node"), []) == "token"


def test_node_shells_know_the_ray_submit_that_reruns_a_sweep(tmp_path: Path) -> None:
    from ray.autoscaler._private.command_runner import _with_interactive

    home = _home_with_leftover_token(tmp_path / "node")
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    for command in [c for c in _cluster()["setup_commands"] if "~/.bashrc" in c and "pip" not in c]:
        subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True)
    remote = " ".join(_with_interactive('echo "$SSL_ROBUST_SUBMIT"'))
    done = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "ray submit infra/cluster.yaml sweeps/full_benchmark.py --"


SHARED_SECTIONS = ("file_mounts", "rsync_exclude", "initialization_commands", "setup_commands", "head_setup_commands",
                   "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def test_the_local_cluster_validates_against_ray_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    local = yaml.safe_load((REPO_ROOT / "infra" / "cluster-local.yaml").read_text())
    jsonschema.validate(local, schema)
    assert local["provider"]["type"] == "local" and "available_node_types" not in local


def test_the_local_cluster_shares_every_section_but_provider_auth_and_nodes_with_the_aws_one() -> None:
    aws = yaml.safe_load(CLUSTER.read_text())
    local = yaml.safe_load((REPO_ROOT / "infra" / "cluster-local.yaml").read_text())
    for section in SHARED_SECTIONS:
        mine = json.dumps(local[section]).replace("infra/cluster-local.yaml", "infra/cluster.yaml")
        assert mine == json.dumps(aws[section]), section
    assert "infra/cluster-local.yaml sweeps/full_benchmark.py" in json.dumps(local["setup_commands"])


@pytest.mark.services
def test_the_local_stack_fails_when_another_server_holds_its_mlflow_port(tmp_path: Path) -> None:
    """A `mlflow ui` already answering on the port must not pass for the stack's own server."""
    import http.server
    import threading

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(STATE_DIR=str(tmp_path / "state"), MLFLOW_PORT=str(other.server_address[1]), S3_PORT=str(free_port()),
               PYTHON=sys.executable)
    script = str(REPO_ROOT / "infra" / "local_stack.sh")
    try:
        done = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=60)
        other.shutdown()
    assert done.returncode != 0 and "local stack up" not in done.stdout
    assert "mlflow server" in done.stderr and ("port" in done.stderr), done.stderr
