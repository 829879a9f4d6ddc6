"""One MLflow run per cell or head (``ssl_robust.tracking.cells``): what a cell's run holds (tags,
params, config, metrics, files) and how it ends, its name, and the lookups a sweep makes over those
runs on a rerun: which cells and heads count as finished (FINISHED runs with their weights, the
oldest first), stale runs failed, claimed runs shared by racing workers."""
from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from ssl_robust.tracking import claims
from ssl_robust.tracking.cells import (HEAD_ARTIFACT, CellRun, cell_params, close_session_runs, finished_heads,
                                       run_claimed, run_name, run_results)
from ssl_robust.tracking.store import code_version, log_params
from tests.helpers import REPO_ROOT, dead_pid, experiment_name


@pytest.fixture()
def exp(uri: str, request: pytest.FixtureRequest) -> tuple[MlflowClient, str, str]:
    """(client, experiment name, experiment id): an experiment of this test's own."""
    name = f"cell-run-{request.node.name}"
    return MlflowClient(uri), name, tracking.ensure_experiment(name, uri)


@pytest.fixture()
def cfg(make_cell_cfg: Callable[..., CellCfg]) -> CellCfg:
    return make_cell_cfg("classification")


# ----------------------------------------------------------------------------- a cell's run


def test_a_cell_run_is_tagged_with_its_cell_sweep_session_and_owner(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    with CellRun(cfg, "attack", exp_id, uri, sweep="grid", session="s-1") as run:
        pass
    got = client.get_run(run.run_id)
    tags = got.data.tags
    assert {k: tags[k] for k in ("cell_id", "head_id", "phase", "sweep", "sweep_session")} == {
        "cell_id": cfg.cell_id, "head_id": cfg.head_id, "phase": "attack", "sweep": "grid", "sweep_session": "s-1"}
    assert tags["code_version"] == code_version() and tags["pid"] == claims.owner_tags()["pid"]
    assert got.info.run_name == run_name(cfg, "attack") and got.info.status == "FINISHED"


def test_a_cell_run_outside_a_sweep_has_an_empty_sweep_and_no_session(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    with CellRun(cfg, "head", exp_id, uri) as run:
        pass
    tags = client.get_run(run.run_id).data.tags
    assert tags["sweep"] == "" and "sweep_session" not in tags
    assert client.get_run(run.run_id).info.run_name == run_name(cfg, "head")


def test_a_cell_run_has_no_id_until_it_is_opened(uri, exp, cfg) -> None:
    assert CellRun(cfg, "attack", exp[2], uri).run_id == ""


def test_a_cell_run_holds_the_params_of_its_phase(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    for phase in ("head", "attack"):
        with CellRun(cfg, phase, exp_id, uri) as run:
            pass
        assert client.get_run(run.run_id).data.params == cell_params(cfg, phase)


def test_a_cell_run_holds_its_config_in_field_order(uri, exp, cfg, tmp_path: Path) -> None:
    client, _, exp_id = exp
    with CellRun(cfg, "attack", exp_id, uri) as run:
        pass
    loaded = yaml.safe_load(Path(client.download_artifacts(run.run_id, "config.yaml", str(tmp_path))).read_text())
    assert CellCfg.model_validate(loaded) == cfg
    assert list(loaded) == list(cfg.model_dump()) and list(loaded["attack"]) == list(cfg.attack.model_dump())


def test_an_unknown_phase_is_an_error_that_names_the_phases(uri, exp, cfg) -> None:
    with pytest.raises(ValueError, match=r"phase must be one of \('head', 'attack'\), got 'fit'"):
        CellRun(cfg, "fit", exp[2], uri)


def test_metrics_beyond_one_request_are_all_logged_once_at_step_zero(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    metrics = {f"m/{i}": float(i) for i in range(2_500)}
    with CellRun(cfg, "attack", exp_id, uri) as run:
        before = time.time() * 1000
        run.log_metrics(metrics)
    assert client.get_run(run.run_id).data.metrics == metrics
    history = client.get_metric_history(run.run_id, "m/1999")
    assert len(history) == 1 and history[0].step == 0 and before - 1 <= history[0].timestamp <= time.time() * 1000


def test_params_beyond_one_request_are_all_logged(uri, exp) -> None:
    client, _, exp_id = exp
    run_id = client.create_run(exp_id).info.run_id
    params = {f"p{i}": str(i) for i in range(250)}
    log_params(client, run_id, params)
    assert client.get_run(run_id).data.params == params


def test_tags_are_written_as_text(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    with CellRun(cfg, "attack", exp_id, uri) as run:
        run.set_tags({"ok": True, "count": 3})
    tags = client.get_run(run.run_id).data.tags
    assert tags["ok"] == "True" and tags["count"] == "3"


def test_files_and_non_empty_folders_are_logged_where_asked(uri, exp, cfg, tmp_path: Path) -> None:
    client, _, exp_id = exp
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("a")
    (tmp_path / "empty").mkdir()
    (tmp_path / "one.txt").write_text("1")
    with CellRun(cfg, "attack", exp_id, uri) as run:
        run.log_dir(tmp_path / "full", "results")
        run.log_dir(tmp_path / "empty", "nothing")
        run.log_dir(tmp_path / "missing", "missing")
        run.log_file(tmp_path / "one.txt", "files")
    listed = {f.path for f in client.list_artifacts(run.run_id)}
    assert listed == {"config.yaml", "results", "files"}
    assert [f.path for f in client.list_artifacts(run.run_id, "results")] == ["results/a.txt"]
    assert run.uri("files/one.txt") == f"runs:/{run.run_id}/files/one.txt"


def test_an_error_inside_a_cell_run_fails_it_and_stops_its_heartbeat(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    with pytest.raises(RuntimeError, match="boom"), CellRun(cfg, "attack", exp_id, uri) as run:
        beat = run.heartbeat
        raise RuntimeError("boom")
    assert client.get_run(run.run_id).info.status == "FAILED"
    assert run.heartbeat is None and not beat.thread.is_alive()


def test_a_run_whose_opening_fails_ends_failed_and_raises(uri, cfg, tmp_path: Path) -> None:
    """The config cannot be written (the artifact location is a file): the run is FAILED, not left RUNNING."""
    client = MlflowClient(uri)
    (tmp_path / "not-a-folder").write_text("")
    exp_id = client.create_experiment("cell-run-no-artifacts", artifact_location=str(tmp_path / "not-a-folder"))
    with pytest.raises(OSError), CellRun(cfg, "attack", exp_id, uri):
        pass
    (failed,) = client.search_runs([exp_id])
    assert failed.info.status == "FAILED"
    assert not any(t.name == f"heartbeat-{failed.info.run_id[:8]}" for t in threading.enumerate())


def test_a_run_discarded_before_work_is_deleted(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    with CellRun(cfg, "attack", exp_id, uri) as run:
        beat = run.heartbeat
        run.discard()
    assert client.get_run(run.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(run.run_id).info.status == "RUNNING" and not beat.thread.is_alive()


def test_a_duplicate_run_is_killed_and_tagged(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    with CellRun(cfg, "attack", exp_id, uri) as run:
        run.discard(duplicate=True)
    got = client.get_run(run.run_id)
    assert got.info.status == "KILLED" and got.data.tags[claims.CLAIM_TAG] == claims.DUPLICATE
    assert got.info.lifecycle_stage == "active"


# ----------------------------------------------------------------------------- params and names


def test_params_are_the_flat_resolved_config(cells: list[CellCfg]) -> None:
    cell = next(c for c in cells if c.attack.name == "pgd" and c.attack.eps > 0)
    params = tracking.cell_params(cell, "attack")
    assert params["encoder"] == cell.encoder.name and params["dataset"] == "synthetic"
    assert params["task"] == "classification" and params["attack"] == "pgd"
    assert params["eps_255"] == "8" and params["steps"] == "3"
    assert params["encoder.name"] == "tiny_dinov2" and params["data.n_train"] == "64"
    assert params["attack.eps"] == str(8 / 255)
    head = tracking.cell_params(cell, "head")
    assert "attack" not in head and not any(k.startswith("attack.") for k in head)


def test_attack_params_add_the_short_names_of_the_attack(cfg) -> None:
    params = cell_params(cfg, "attack")
    assert params["eps"] == f"{8 / 255:.6g}" and params["eps_255"] == "8" and params["attack"] == "pgd"
    assert params["steps"] == str(cfg.attack.steps) and params["attack.name"] == "pgd"
    assert "attack" not in cell_params(cfg, "head") and "attack.name" not in cell_params(cfg, "head")


def test_runs_are_named_as_their_cell(cells: list[CellCfg]) -> None:
    cell = next(c for c in cells if c.attack.name == "pgd" and c.attack.eps > 0)
    assert tracking.cells.run_name(cell, "attack") == f"{cell.encoder.name} · synthetic classification · pgd · 8/255"
    assert tracking.cells.run_name(cell, "head") == f"head · {cell.encoder.name} · synthetic classification"


def test_run_names_read_as_the_cell(make_cell_cfg) -> None:
    cfg = make_cell_cfg("segmentation", attack={"eps": "4/255"})
    assert run_name(cfg, "attack") == f"{cfg.encoder.name} · synthetic segmentation · segpgd · 4/255"
    assert run_name(cfg, "head") == f"head · {cfg.encoder.name} · synthetic segmentation"
    tuned = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"checkpoint": "s3://b/deacl-7.pt"})})
    assert run_name(tuned, "head") == f"head · {cfg.encoder.name} (deacl-7) · synthetic segmentation"


def test_run_names_of_real_data_sets_leave_their_task_out(cfg) -> None:
    cifar = cfg.model_copy(update={"data": cfg.data.model_copy(update={"name": "cifar10"})})
    assert run_name(cifar, "head") == f"head · {cfg.encoder.name} · cifar10"


# ----------------------------------------------------------------------------- finished, failed and stale runs


def test_finished_failed_and_stale_runs(store: tuple[str, str], cells: list[CellCfg],
                                        request: pytest.FixtureRequest) -> None:
    uri, exp_id = store
    name = experiment_name(request)
    with tracking.CellRun(cells[0], "attack", exp_id, uri, sweep="t") as run:
        run.log_metrics({"clean/acc": 0.5, "adv/acc": 0.25})
    with pytest.raises(RuntimeError), tracking.CellRun(cells[1], "attack", exp_id, uri) as failed:
        raise RuntimeError("cell crashed")
    stale = tracking.CellRun(cells[2], "attack", exp_id, uri).__enter__()  # a worker killed mid-cell
    client = MlflowClient(uri)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert tracking.finished_cells(name, uri) == {cells[0].cell_id: run.run_id}
    got = client.get_run(run.run_id)
    assert got.data.metrics["adv/acc"] == 0.25
    assert got.data.tags["cell_id"] == cells[0].cell_id and got.data.tags["phase"] == "attack"
    assert got.data.tags["code_version"].startswith("0.")
    assert tracking.fail_stale_runs(name, "attack", uri) == [stale.run_id]
    assert client.get_run(stale.run_id).info.status == "FAILED"
    rows = tracking.run_results(name, "attack", uri)
    assert [r["cell_id"] for r in rows] == [cells[0].cell_id] and rows[0]["clean/acc"] == 0.5


def test_the_oldest_finished_run_of_a_cell_wins_over_a_newer_one(tracking_uri: str) -> None:
    uri = tracking_uri
    exp_id = tracking.ensure_experiment("duplicates", uri)
    client = MlflowClient(uri)
    tags = {"phase": "attack", "cell_id": "cell-1"}
    newer = client.create_run(exp_id, start_time=2_000_000, tags=tags).info.run_id  # created first, started later
    older = client.create_run(exp_id, start_time=1_000_000, tags=tags).info.run_id
    for run_id in (newer, older):
        client.set_terminated(run_id, "FINISHED")
    assert tracking.finished_cells("duplicates", uri) == {"cell-1": older}


def test_run_results_are_the_finished_runs_of_a_phase_with_their_key(uri, exp, cfg) -> None:
    client, name, exp_id = exp
    with CellRun(cfg, "attack", exp_id, uri) as run:
        run.log_metrics({"adv/acc": 0.25})
    with CellRun(cfg, "head", exp_id, uri):
        pass
    with pytest.raises(RuntimeError), CellRun(cfg, "attack", exp_id, uri):
        raise RuntimeError
    (row,) = run_results(name, tracking_uri=uri)  # attack runs unless a phase is given
    assert row["run_id"] == run.run_id and row["cell_id"] == cfg.cell_id and row["adv/acc"] == 0.25
    assert row["start_time"] == client.get_run(run.run_id).info.start_time and row["eps_255"] == "8"
    assert run_results("no-such-experiment", "attack", uri) == []


def test_closing_a_session_ends_only_its_running_runs(uri, exp) -> None:
    client, name, exp_id = exp
    mine = client.create_run(exp_id, tags={"sweep_session": "s-1"}).info.run_id
    done = client.create_run(exp_id, tags={"sweep_session": "s-1"}).info.run_id
    client.set_terminated(done, "FINISHED")
    other = client.create_run(exp_id, tags={"sweep_session": "s-2"}).info.run_id
    assert close_session_runs(name, "s-1", "KILLED", uri) == [mine]
    status = {run_id: client.get_run(run_id).info.status for run_id in (mine, done, other)}
    assert status == {mine: "KILLED", done: "FINISHED", other: "RUNNING"}
    assert close_session_runs("no-such-experiment", "s-1", "KILLED", uri) == []


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


def test_failing_the_stale_runs_of_one_key_leaves_other_keys_running(uri: str) -> None:
    exp_id = tracking.ensure_experiment("stale-key", uri)
    client = MlflowClient(uri)
    mine, other = (client.create_run(exp_id, tags={"phase": "attack", "cell_id": c}).info.run_id
                   for c in ("cell-1", "cell-2"))
    assert tracking.fail_stale_runs("stale-key", "attack", uri, key_value="cell-1") == [mine]
    assert client.get_run(mine).info.status == "FAILED" and client.get_run(other).info.status == "RUNNING"


# ----------------------------------------------------------------------------- claimed runs


@pytest.fixture()
def fast_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssl_robust.tracking import claims

    monkeypatch.setattr(claims, "SETTLE_S", 0.6)
    monkeypatch.setattr(claims, "POLL_S", 0.1)


def test_run_claimed_tags_the_run_with_its_sweep_and_session(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    run_id, metrics = run_claimed(cfg, "attack", exp_id, uri, lambda run: {"adv/acc": 0.5},
                                  sweep="grid", session="s-1")
    tags = client.get_run(run_id).data.tags
    assert metrics == {"adv/acc": 0.5} and tags["sweep"] == "grid" and tags["sweep_session"] == "s-1"
    assert client.get_run(run_id).data.metrics == {"adv/acc": 0.5}


def test_run_claimed_outside_a_sweep_leaves_sweep_and_session_empty(uri, exp, cfg) -> None:
    client, _, exp_id = exp
    run_id, _ = run_claimed(cfg, "attack", exp_id, uri, lambda run: {})
    tags = client.get_run(run_id).data.tags
    assert tags["sweep"] == "" and "sweep_session" not in tags


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


def test_concurrent_claims_give_one_finished_run_per_key(store: tuple[str, str], cells: list[CellCfg],
                                                         fast_claims: None) -> None:
    """Four workers race for one cell: one runs it, the others reuse its run; no duplicate FINISHED."""
    import threading

    from ssl_robust.tracking.cells import run_claimed

    uri, _ = store
    exp_id = tracking.ensure_experiment("claims-race", uri)
    ran: list[str] = []
    got: list[tuple[str, Any]] = []
    barrier = threading.Barrier(4)

    def work(run: tracking.CellRun) -> dict[str, float]:
        ran.append(run.run_id)
        time.sleep(0.3)
        return {"clean/acc": 1.0}

    def worker() -> None:
        barrier.wait()
        got.append(run_claimed(cells[0], "attack", exp_id, uri, work, sweep="claims-race"))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    client = MlflowClient(uri)
    finished = client.search_runs([exp_id], "attributes.status = 'FINISHED'")
    assert len(finished) == 1 and ran == [finished[0].info.run_id]
    assert sorted(run_id for run_id, _ in got) == [finished[0].info.run_id] * 4
    assert sum(metrics is not None for _, metrics in got) == 1
    assert not client.search_runs([exp_id], "attributes.status = 'RUNNING'")


def test_a_claim_whose_owner_died_is_taken_over(store: tuple[str, str], cells: list[CellCfg],
                                                 fast_claims: None) -> None:
    import socket

    from ssl_robust.tracking.cells import run_claimed

    uri, _ = store
    exp_id = tracking.ensure_experiment("claims-dead", uri)
    client = MlflowClient(uri)
    orphan = client.create_run(exp_id, tags={"phase": "attack", "cell_id": cells[0].cell_id, "claim": "held",
                                             "host": socket.gethostname(), "pid": str(dead_pid()),
                                             "heartbeat": f"{time.time():.0f}"}).info.run_id
    far = client.create_run(exp_id, tags={"phase": "attack", "cell_id": cells[1].cell_id, "claim": "held",
                                          "host": "elsewhere", "pid": "1", "heartbeat": "0"}).info.run_id
    for cell in cells[:2]:
        run_id, metrics = run_claimed(cell, "attack", exp_id, uri, lambda run: {"clean/acc": 0.5})
        assert metrics == {"clean/acc": 0.5} and run_id not in (orphan, far)
    assert client.get_run(orphan).info.status == "FAILED" and client.get_run(far).info.status == "FAILED"


def test_a_finished_head_without_its_artifact_is_failed_and_refitted(store: tuple[str, str], cells: list[CellCfg],
                                                                      fast_claims: None, tmp_path: Path) -> None:
    from ssl_robust.tracking.cells import finished_heads, run_claimed

    uri, _ = store
    exp_id = tracking.ensure_experiment("heads-missing", uri)
    with tracking.CellRun(cells[0], "head", exp_id, uri) as lost:
        pass  # FINISHED, but its head/head.safetensors is gone
    assert finished_heads("heads-missing", uri) == {}
    client = MlflowClient(uri)
    assert client.get_run(lost.run_id).info.status == "FAILED"
    assert client.get_run(lost.run_id).data.tags["artifact_missing"] == "true"
    weights = tmp_path / "head.safetensors"
    weights.write_bytes(b"w")

    def fit(run: tracking.CellRun) -> dict[str, float]:
        run.log_file(weights, "head")
        return {"head/seconds": 1.0}

    run_id, metrics = run_claimed(cells[0], "head", exp_id, uri, fit)
    assert metrics is not None and finished_heads("heads-missing", uri) == {cells[0].head_id: run_id}
    assert run_claimed(cells[0], "head", exp_id, uri, fit) == (run_id, None)  # reused, not refitted


def test_a_run_that_loses_its_claim_while_working_ends_as_a_duplicate(uri, exp, cfg,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An older live holder appears while the work runs: the work's run is KILLED as a duplicate
    and the holder's result is returned once it finishes."""
    client, _, exp_id = exp
    monkeypatch.setattr(claims, "SETTLE_S", 0.6)
    monkeypatch.setattr(claims, "POLL_S", 0.05)
    holder: list[str] = []

    def work(run: CellRun) -> dict[str, Any]:
        tags = {"phase": "attack", "cell_id": cfg.cell_id, claims.CLAIM_TAG: claims.HELD, **claims.owner_tags()}
        holder.append(client.create_run(exp_id, start_time=1, tags=tags).info.run_id)
        threading.Timer(1.5, client.set_terminated, (holder[0], "FINISHED")).start()
        return {"adv/acc": 0.5}

    assert run_claimed(cfg, "attack", exp_id, uri, work) == (holder[0], None)
    (duplicate,) = client.search_runs([exp_id], "attributes.status = 'KILLED'")
    assert duplicate.data.tags[claims.CLAIM_TAG] == claims.DUPLICATE and duplicate.data.metrics == {}


# ----------------------------------------------------------------------------- the runs table's documented searches


def _documented_searches() -> dict[str, str]:
    """``{what it shows: search}`` from docs/sweeps.md's table of runs-table searches."""
    text = (REPO_ROOT / "docs" / "sweeps.md").read_text()
    table = text[text.index("| to see | search |"):].split("\n\n")[0].splitlines()[2:]
    out = {}
    for line in table:
        what, search = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:3]]
        quoted = re.fullmatch(r"``(.*)``|`(.*)`", search)
        out[what] = quoted.group(1) or quoted.group(2)
    return out


def test_the_documented_runs_table_searches_find_their_runs(store: tuple[str, str], cells: list[CellCfg]) -> None:
    uri, exp_id = store
    client = MlflowClient(uri)
    pgd = next(c for c in cells if c.attack.name == "pgd" and c.attack.eps > 0 and c.encoder.name == "tiny_dinov2")

    def run(tags: dict[str, str], params: dict[str, str], metrics: dict[str, float]) -> str:
        run_id = client.create_run(exp_id, tags=tags).info.run_id
        for key, value in params.items():
            client.log_param(run_id, key, value)
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        client.set_terminated(run_id, "FINISHED")
        return run_id

    fine_tune = run({"phase": "deacl"}, {"gamma": "2.0"}, {"probe/clean_acc": 0.9})
    passed = run({"phase": "attack"}, {**tracking.cell_params(pgd, "attack"), "dataset": "cifar10",
                                       "encoder": "dinov2_vits14"}, {"check/all_passed": 1.0})
    failed = run({"phase": "attack"}, tracking.cell_params(pgd, "attack"), {"check/all_passed": 0.0})
    student = run({"phase": "attack"}, {"encoder.checkpoint": f"runs:/{fine_tune}/checkpoints/epoch_001.safetensors"},
                  {"check/all_passed": 1.0})
    expected = {"every finished cell": {passed, failed, student},
                "one encoder on one data set, every attack and ε": {passed},
                "cells whose checks failed": {failed}, "DeACL fine-tunes": {fine_tune},
                "the students of one fine-tune": {student}}
    searches = _documented_searches()
    assert set(searches) == set(expected)
    for what, search in searches.items():
        found = {r.info.run_id for r in client.search_runs([exp_id], search.replace("<run_id>", fine_tune))}
        assert found == expected[what], (what, search)
