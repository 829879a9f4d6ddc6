"""Shared fixtures: the tiny random-init encoder and tiny cell configs on synthetic data, fitted heads,
a spy on the attack engine, SQLite tracking stores (one per test or one per module), and one real
stack per session (S3 endpoint + MLflow server started by infra/local_stack.sh on free loopback
ports) plus a real local Ray instance per module. Every test runs without the caller's MLflow/AWS
variables and with its own cache folder."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

from tests.helpers import (REPO_ROOT, TASK_ATTACKS, TINY_BATCH, TINY_ENCODER, TINY_IMAGE_SIZE, TINY_N_SAMPLES,
                           EngineSpy, free_port, install_chromium, merge, shared_scope, spy_engine, sqlite_uri)

os.environ.setdefault("TQDM_DISABLE", "1")
# Tiny models: one intra-op thread is as fast as two, and far faster when several test
# processes share the machine's cores (oversubscribed OpenMP threads spin).
torch.set_num_threads(1)

BUCKET = "sweep-tests"


@pytest.fixture(scope="session")
def tiny_encoder_cfg() -> dict[str, Any]:
    """EncoderCfg fields of the tiny encoder (no download, no checkpoint)."""
    return {"name": TINY_ENCODER}


@pytest.fixture(scope="session")
def tiny_cell_cfg(tiny_encoder_cfg: dict[str, Any]) -> dict[str, Any]:
    """CellCfg fields of a seconds-long classification cell on the synthetic data set."""
    return {
        "encoder": copy.deepcopy(tiny_encoder_cfg),
        "data": {"name": "synthetic", "task": "classification", "n_train": 128, "n_val": 32,
                 "n_samples": TINY_N_SAMPLES},
        "head": {"epochs": 15, "lr": 0.05, "batch_size": 64},
        "attack": {"name": "pgd", "eps": "8/255", "steps": 5, "norm": "linf"},
        "seed": 0,
        "batch_size": TINY_BATCH,
        "device": "cpu",
    }


@pytest.fixture(scope="session")
def cell_data(tiny_cell_cfg: dict[str, Any]) -> Callable[..., dict[str, Any]]:
    """``cell_data({"attack": {"eps": 0.1}})`` -> the tiny cell's raw dict with those fields changed."""

    def make(updates: dict[str, Any] | None = None) -> dict[str, Any]:
        return merge(tiny_cell_cfg, updates or {})

    return make


@pytest.fixture(scope="session")
def make_cell_cfg(tiny_cell_cfg: dict[str, Any]) -> Callable[..., Any]:
    """``make_cell_cfg(task, attack={"eps": 0}, ...)`` -> a validated CellCfg of the tiny cell on
    ``task``, attacked by the task's own attack unless ``attack={"name": ...}`` says otherwise."""
    from ssl_robust.config import CellCfg

    def make(task: str = "classification", **updates: Any) -> CellCfg:
        data = merge(tiny_cell_cfg, {"data": {"task": task}, "attack": {"name": TASK_ATTACKS[task]}})
        return CellCfg.model_validate(merge(data, updates))

    return make


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_cfg: dict[str, Any]):
    """The tiny encoder, frozen and in eval mode (shared: do not modify)."""
    from ssl_robust.config import EncoderCfg
    from ssl_robust.encoders import create_encoder

    torch.manual_seed(0)
    return create_encoder(EncoderCfg(**tiny_encoder_cfg))


@pytest.fixture(scope=shared_scope("session"))
def fitted_head(make_cell_cfg: Callable[..., Any],
                tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``fitted_head(task)`` -> path of the head ``prepare_head`` fitted for ``make_cell_cfg(task)``
    (safetensors; fitted once per task and session, on first use)."""
    from ssl_robust.head_fit import prepare_head

    folder = tmp_path_factory.mktemp("heads")
    paths: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in paths:
            prepare_head(make_cell_cfg(task), folder / f"{task}.safetensors")
            paths[task] = folder / f"{task}.safetensors"
        return paths[task]

    return get


@pytest.fixture(scope=shared_scope("session"))
def fitted_classifier(make_cell_cfg: Callable[..., Any], fitted_head: Callable[[str], Path]):
    """(model, x, y): the tiny encoder + fitted linear classifier, and 32 synthetic test images."""
    from ssl_robust.head_fit import load_head
    from ssl_robust.config import EncoderCfg
    from ssl_robust.data.load import load_split
    from ssl_robust.encoders import create_encoder
    from ssl_robust.heads import TaskModel

    cfg = make_cell_cfg("classification", data={"n_samples": 32})
    torch.manual_seed(cfg.seed)  # the same encoder weights prepare_head saw
    encoder = create_encoder(EncoderCfg(**cfg.encoder.model_dump()))
    head = load_head(cfg, encoder, str(fitted_head("classification")))
    model = TaskModel(encoder, head).eval().requires_grad_(False)
    dataset, _ = load_split(cfg.data, "test", TINY_IMAGE_SIZE, seed=cfg.seed)
    images, labels = zip(*[dataset[i] for i in range(len(dataset))])
    return model, torch.stack(images), torch.tensor(labels)


@pytest.fixture()
def default_device_elsewhere() -> Iterator[None]:
    """torch's default device is `meta` for the test (make inputs on the CPU explicitly): a tensor the
    code under test made on the default device instead of its input's has no data, and mixing it with
    a CPU tensor or reading it is an error."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture()
def engine_spy(monkeypatch: pytest.MonkeyPatch) -> EngineSpy:
    """An ``EngineSpy`` standing in for the engine every cell of this test calls."""
    return spy_engine(monkeypatch)


@pytest.fixture()
def tracking_uri(tmp_path: Path) -> str:
    """A fresh SQLite tracking store of this test's own, ``tmp_path / "mlflow.db"`` (created when MLflow
    first opens it)."""
    return sqlite_uri(tmp_path / "mlflow.db")


@pytest.fixture(scope="module")
def module_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite tracking store shared by the tests of one module (a fresh store's migrations take
    seconds); each test keeps to experiments of its own."""
    return sqlite_uri(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


# Variables that point a test at somebody's tracking store, bucket or credentials.
_OUTSIDE_ENV = ("MLFLOW_", "AWS_")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's headless chromium (installed here if missing)."""
    path = install_chromium()
    if path is None:
        pytest.skip("Debian's chromium is not installed and `apt-get install -y chromium` failed "
                    "(no root, no sudo or no package source); .ci/run installs it")
    return path


@pytest.fixture(autouse=True)
def own_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every test starts without MLflow/AWS variables and with its own empty cache folder; whatever
    it sets is undone after it."""
    for key in list(os.environ):
        if key.startswith(_OUTSIDE_ENV):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


def _local_stack(state: Path, backend_store_uri: str | None = None) -> Iterator[dict[str, Any]]:
    """infra/local_stack.sh's moto S3 server and `mlflow server` (artifacts proxied to s3://BUCKET) on
    loopback, with state in ``state``; yields their URLs and the environment that reaches them."""
    s3_port, mlflow_port = free_port(), free_port()
    env = {
        "AWS_ACCESS_KEY_ID": "sweep-test-key", "AWS_SECRET_ACCESS_KEY": "sweep-test-secret-0123",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{s3_port}",
        "RAY_AUTH_MODE": "disabled", "XDG_CACHE_HOME": str(state / "cache"),
    }
    script_env = {k: v for k, v in os.environ.items() if not k.startswith(_OUTSIDE_ENV)}
    script_env.update(env, STATE_DIR=str(state), S3_PORT=str(s3_port), MLFLOW_PORT=str(mlflow_port), BUCKET=BUCKET,
                      PYTHON=sys.executable)
    if backend_store_uri:
        script_env["BACKEND_STORE_URI"] = backend_store_uri
    script = str(REPO_ROOT / "infra" / "local_stack.sh")
    try:
        subprocess.run([script, "start"], env=script_env, check=True, timeout=180, capture_output=True, text=True)
        yield {"tracking_uri": f"http://127.0.0.1:{mlflow_port}", "bucket": BUCKET,
               "secret": env["AWS_SECRET_ACCESS_KEY"], "state": str(state), "env": env}
    finally:
        subprocess.run([script, "stop"], env=script_env, timeout=60, capture_output=True)


@pytest.fixture(scope="session")
def stack_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The local stack on SQLite, started once. The environment of the tests is left alone: ``stack``
    (one test) and ``stack_env`` (one module) set it."""
    yield from _local_stack(tmp_path_factory.mktemp("stack"))


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_uri() -> Iterator[str]:
    """A PostgreSQL server (Debian's) on a free loopback port with a database ``mlflow``, run as the
    ``postgres`` user in its own temporary cluster; yields its SQLAlchemy URI."""
    import pwd

    bin_dir = _postgres_bin()
    if bin_dir is None or os.geteuid() != 0:
        why = "PostgreSQL is not installed" if bin_dir is None else "starting PostgreSQL here needs root (runuser)"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (.ci/run installs Debian's postgresql)")
        pytest.skip(why)
    user = pwd.getpwnam("postgres")
    data = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    os.chown(data, user.pw_uid, user.pw_gid)
    port = free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "mlflow", "-A", "trust"],
                   check=True, capture_output=True, timeout=120)
    server = subprocess.Popen([*as_postgres, str(bin_dir / "postgres"), "-D", str(data / "db"), "-p", str(port),
                               "-h", "127.0.0.1", "-k", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            done = subprocess.run([*as_postgres, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                   "-U", "mlflow", "mlflow"], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr.decode(errors='replace')}")
        yield f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_stack_servers(postgres_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The local stack with its `mlflow server` on PostgreSQL, as in production."""
    yield from _local_stack(tmp_path_factory.mktemp("pg_stack"), postgres_uri)


def _enter_stack(mp: pytest.MonkeyPatch, servers: dict[str, Any]) -> dict[str, str]:
    for key in list(os.environ):
        if key.startswith(_OUTSIDE_ENV):
            mp.delenv(key)
    for key, value in servers["env"].items():
        mp.setenv(key, value)
    return {k: v for k, v in servers.items() if k != "env"}


@pytest.fixture(scope="module")
def stack_env(stack_servers: dict[str, Any]) -> Iterator[dict[str, str]]:
    """The stack's dummy AWS keys and endpoint in the environment for a whole module (for Ray
    instances and module fixtures, whose workers inherit it); undone when the module ends."""
    with pytest.MonkeyPatch.context() as mp:
        yield _enter_stack(mp, stack_servers)


@pytest.fixture()
def stack(stack_servers: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The stack's dummy AWS keys and endpoint in this test's environment; yields the stack's URLs."""
    return _enter_stack(monkeypatch, stack_servers)


@pytest.fixture(scope="module")
def ray_local(stack_env: dict[str, str]) -> Iterator[None]:
    """A real local Ray instance with 2 CPUs, started after the stack's environment is set."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def s3(stack_servers: dict[str, Any]) -> Any:
    """A client of the stack's S3 endpoint (credentials given explicitly, not read from the environment)."""
    import boto3

    env = stack_servers["env"]
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
