"""What one cell's MLflow run holds (tags, params, config, metrics, files), how it ends, and the
lookups a sweep makes over those runs (`ssl_robust.tracking.cells`)."""
from __future__ import annotations

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
from ssl_robust.tracking.cells import CellRun, cell_params, close_session_runs, run_claimed, run_name, run_results
from ssl_robust.tracking.store import code_version, log_params


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def exp(uri: str, request: pytest.FixtureRequest) -> tuple[MlflowClient, str, str]:
    """(client, experiment name, experiment id): an experiment of this test's own."""
    name = f"cell-run-{request.node.name}"
    return MlflowClient(uri), name, tracking.ensure_experiment(name, uri)


@pytest.fixture()
def cfg(make_cell_cfg: Callable[..., CellCfg]) -> CellCfg:
    return make_cell_cfg("classification")


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


def test_run_names_read_as_the_cell(make_cell_cfg) -> None:
    cfg = make_cell_cfg("segmentation", attack={"eps": "4/255"})
    assert run_name(cfg, "attack") == f"{cfg.encoder.name} · synthetic segmentation · segpgd · 4/255"
    assert run_name(cfg, "head") == f"head · {cfg.encoder.name} · synthetic segmentation"
    tuned = cfg.model_copy(update={"encoder": cfg.encoder.model_copy(update={"checkpoint": "s3://b/deacl-7.pt"})})
    assert run_name(tuned, "head") == f"head · {cfg.encoder.name} (deacl-7) · synthetic segmentation"


def test_run_names_of_real_data_sets_leave_their_task_out(cfg) -> None:
    cifar = cfg.model_copy(update={"data": cfg.data.model_copy(update={"name": "cifar10"})})
    assert run_name(cifar, "head") == f"head · {cfg.encoder.name} · cifar10"


def test_attack_params_add_the_short_names_of_the_attack(cfg) -> None:
    params = cell_params(cfg, "attack")
    assert params["eps"] == f"{8 / 255:.6g}" and params["eps_255"] == "8" and params["attack"] == "pgd"
    assert params["steps"] == str(cfg.attack.steps) and params["attack.name"] == "pgd"
    assert "attack" not in cell_params(cfg, "head") and "attack.name" not in cell_params(cfg, "head")


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
