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


def test_a_head_run_without_a_head_id_is_no_finished_head(uri: str, weights: Path) -> None:
    exp_id = tracking.ensure_experiment("no-head-id", uri)
    client = MlflowClient(uri)
    run_id = client.create_run(exp_id, tags={"phase": "head"}).info.run_id
    client.log_artifact(run_id, str(weights), str(Path(HEAD_ARTIFACT).parent))
    client.set_terminated(run_id, "FINISHED")
    assert finished_heads("no-head-id", uri) == {}


def test_finished_runs_are_attack_runs_unless_a_phase_is_given(uri: str) -> None:
    exp_id = tracking.ensure_experiment("default-phase", uri)
    client = MlflowClient(uri)
    ids = {}
    for phase, key in (("attack", "cell_id"), ("head", "head_id")):
        ids[phase] = client.create_run(exp_id, tags={"phase": phase, key: f"{phase}-1"}).info.run_id
        client.set_terminated(ids[phase], "FINISHED")
    assert tracking.finished_runs("default-phase", tracking_uri=uri) == {"attack-1": ids["attack"]}


def test_failing_the_stale_runs_of_one_key_leaves_other_keys_running(uri: str) -> None:
    exp_id = tracking.ensure_experiment("stale-key", uri)
    client = MlflowClient(uri)
    mine, other = (client.create_run(exp_id, tags={"phase": "attack", "cell_id": c}).info.run_id
                   for c in ("cell-1", "cell-2"))
    assert tracking.fail_stale_runs("stale-key", "attack", uri, key_value="cell-1") == [mine]
    assert client.get_run(mine).info.status == "FAILED" and client.get_run(other).info.status == "RUNNING"


def test_a_claim_reuses_the_oldest_finished_run_whatever_its_run_id(uri: str) -> None:
    from ssl_robust.tracking.cells import claim_for

    exp_id = tracking.ensure_experiment("claim-oldest", uri)
    client = MlflowClient(uri)
    runs: list[str] = []
    start = 9_000_000
    while len(runs) < 2 or min(runs) == runs[-1]:  # until the oldest run is not the smallest run id
        start -= 1_000_000
        runs.append(client.create_run(exp_id, start_time=start, tags={"phase": "attack", "cell_id": "c"}).info.run_id)
        client.set_terminated(runs[-1], "FINISHED")
    assert claim_for(uri, exp_id, "attack", "c").wait() == runs[-1]


def test_finished_runs_of_one_key_are_only_that_keys(uri: str) -> None:
    exp_id = tracking.ensure_experiment("one-key", uri)
    client = MlflowClient(uri)
    ids = {}
    for cell in ("cell-1", "cell-2"):
        ids[cell] = client.create_run(exp_id, tags={"phase": "attack", "cell_id": cell}).info.run_id
        client.set_terminated(ids[cell], "FINISHED")
    assert tracking.finished_runs("one-key", "attack", uri, key_value="cell-2") == {"cell-2": ids["cell-2"]}


def test_a_finished_run_without_its_key_tag_is_left_out(uri: str) -> None:
    exp_id = tracking.ensure_experiment("no-key", uri)
    client = MlflowClient(uri)
    client.set_terminated(client.create_run(exp_id, tags={"phase": "attack"}).info.run_id, "FINISHED")
    keyed = client.create_run(exp_id, tags={"phase": "attack", "cell_id": "cell-1"}).info.run_id
    client.set_terminated(keyed, "FINISHED")
    assert tracking.finished_runs("no-key", "attack", uri) == {"cell-1": keyed}
