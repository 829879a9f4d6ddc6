"""Which heads count as finished on a rerun: FINISHED head runs with their weights, the oldest first."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.tracking.cells import HEAD_ARTIFACT, finished_heads


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite tracking URI of this module (migrations take seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _head_run(client: MlflowClient, exp_id: str, start: int, weights: Path, phase: str = "head",
              status: str | None = "FINISHED") -> str:
    run_id = client.create_run(exp_id, start_time=start, tags={"phase": phase, "head_id": "head-1"}).info.run_id
    client.log_artifact(run_id, str(weights), str(Path(HEAD_ARTIFACT).parent))
    if status:
        client.set_terminated(run_id, status)
    return run_id


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    path = tmp_path / Path(HEAD_ARTIFACT).name
    path.write_bytes(b"w")
    return path


def test_the_oldest_finished_head_run_wins(uri: str, weights: Path) -> None:
    exp_id = tracking.ensure_experiment("oldest-head", uri)
    client = MlflowClient(uri)
    _head_run(client, exp_id, 3_000_000, weights)
    older = _head_run(client, exp_id, 1_000_000, weights)
    _head_run(client, exp_id, 2_000_000, weights)
    assert finished_heads("oldest-head", uri) == {"head-1": older}


def test_only_finished_head_runs_count_as_finished_heads(uri: str, weights: Path) -> None:
    exp_id = tracking.ensure_experiment("running-head", uri)
    client = MlflowClient(uri)
    running = _head_run(client, exp_id, 1_000_000, weights, status=None)  # weights logged, not finished
    attack = _head_run(client, exp_id, 1_000_000, weights, phase="attack")  # carries the head_id tag too
    assert finished_heads("running-head", uri) == {}
    assert client.get_run(running).info.status == "RUNNING" and client.get_run(attack).info.status == "FINISHED"
