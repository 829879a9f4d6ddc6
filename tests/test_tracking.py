"""Tracking on the embedded default (SQLite file + local artifacts): runs, lookups, artifacts."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from ssl_robust.sweep_config import expand, parse_sweep
from tests.helpers import CHROMIUM_FLAGS, REPO_ROOT, dead_pid, tiny_sweep


@pytest.fixture(scope="module")
def cells() -> list[CellCfg]:
    return expand(parse_sweep(tiny_sweep("t")))


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite tracking URI, created once per module (migrations take seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    tracking.ensure_experiment("schema", uri)
    return uri


@pytest.fixture()
def store(store_uri: str, request: pytest.FixtureRequest) -> tuple[str, str]:
    """The module's tracking URI and an experiment of this test's own (named ``experiment_name``)."""
    return store_uri, tracking.ensure_experiment(experiment_name(request), store_uri)


def experiment_name(request: pytest.FixtureRequest) -> str:
    return f"tracking-{request.node.name}"


def test_absolute_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.absolute_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.absolute_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path.resolve()}/x.db"
    assert tracking.absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.absolute_tracking_uri(None) == "http://mlflow:5000"


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


def test_local_path_resolves_runs_file_and_plain_paths(store: tuple[str, str], cells: list[CellCfg],
                                                          tmp_path: Path, request: pytest.FixtureRequest) -> None:
    uri, exp_id = store
    name = experiment_name(request)
    src = tmp_path / "head.safetensors"
    src.write_bytes(b"weights")
    with tracking.CellRun(cells[0], "head", exp_id, uri) as run:
        run.log_file(src, "head")
    got = tracking.local_path(f"runs:/{run.run_id}/head/head.safetensors", tmp_path / "dl", uri)
    assert got.read_bytes() == b"weights"
    config = tracking.local_path(run.uri("config.yaml"), tmp_path / "dl2", uri)
    assert CellCfg.model_validate(yaml.safe_load(config.read_text())) == cells[0]
    assert tracking.local_path(src.as_uri()) == src
    assert tracking.local_path(str(src)) == src
    assert tracking.finished_runs(name, "head", uri) == {cells[0].head_id: run.run_id}
    with pytest.raises(FileNotFoundError):
        tracking.local_path(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="unsupported artifact URI"):
        tracking.local_path("gs://bucket/key")


def test_trials_localize_checkpoint_uris_with_the_sweeps_tracking_uri(store: tuple[str, str],
                                                                     cells: list[CellCfg],
                                                                     tmp_path: Path) -> None:
    uri, exp_id = store
    for name in ("encoder.safetensors", "head.safetensors"):
        (tmp_path / name).write_bytes(name.encode())
    with tracking.CellRun(cells[0], "head", exp_id, uri) as run:
        run.log_file(tmp_path / "encoder.safetensors", "ckpt")
        run.log_file(tmp_path / "head.safetensors", "ckpt")
    cfg = cells[0].model_copy(update={
        "encoder": cells[0].encoder.model_copy(update={"checkpoint": run.uri("ckpt/encoder.safetensors")}),
        "head": cells[0].head.model_copy(update={"checkpoint": run.uri("ckpt/head.safetensors")}),
    })
    local = tracking.localize(cfg, uri)
    assert Path(local.encoder.checkpoint).read_bytes() == b"encoder.safetensors"
    assert Path(local.head.checkpoint).read_bytes() == b"head.safetensors"
    assert local.data == cfg.data and local.attack == cfg.attack


@pytest.fixture()
def fast_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssl_robust.tracking import claims

    monkeypatch.setattr(claims, "SETTLE_S", 0.6)
    monkeypatch.setattr(claims, "POLL_S", 0.1)


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


def _open_store(uri: str, start: float) -> str:
    while time.time() < start:
        time.sleep(0.01)
    return tracking.ensure_experiment("race", uri)


@pytest.mark.slow
def test_three_processes_open_a_fresh_sqlite_store_at_once(tmp_path: Path) -> None:
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        start = time.time() + 8  # after the children's imports
        ids = pool.starmap(_open_store, [(uri, start)] * 3, chunksize=1)
    assert len(set(ids)) == 1


def test_runs_are_named_as_their_cell_and_experiments_open_on_the_runs_table(store: tuple[str, str],
                                                                            cells: list[CellCfg]) -> None:
    uri, exp_id = store
    cell = next(c for c in cells if c.attack.name == "pgd" and c.attack.eps > 0)
    assert tracking.cells.run_name(cell, "attack") == f"{cell.encoder.name} · synthetic classification · pgd · 8/255"
    assert tracking.cells.run_name(cell, "head") == f"head · {cell.encoder.name} · synthetic classification"
    tags = MlflowClient(uri).get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_s3_client_reads_the_credentials_of_the_environment_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that once had credentials must not keep using them (boto3's default session caches them)."""
    from ssl_robust.tracking.artifacts import s3_client

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert s3_client()._request_signer._credentials.access_key == "key"
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert s3_client()._request_signer._credentials is None


def test_a_sweeps_description_becomes_its_experiments_description(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = tracking.ensure_experiment("described", uri, "tiny ViTs x synthetic")
    assert MlflowClient(uri).get_experiment(exp_id).tags["mlflow.note.content"] == "tiny ViTs x synthetic"
    tracking.ensure_experiment("described", uri, "a new description")
    assert MlflowClient(uri).get_experiment(exp_id).tags["mlflow.note.content"] == "a new description"
    assert "mlflow.note.content" not in MlflowClient(uri).get_experiment(tracking.ensure_experiment("plain", uri)).tags


def test_a_students_encoder_drops_the_teachers_checkpoint_key() -> None:
    """The teacher may be a Lightning checkpoint read under a prefix; a student's file is plain timm weights."""
    from types import SimpleNamespace

    teacher = {"name": "dino_vitb16", "checkpoint": "/ckpt/deacl.ckpt", "checkpoint_key": "backbone.encoder."}
    run = SimpleNamespace(data=SimpleNamespace(params={"encoder_config": yaml.safe_dump(teacher)}),
                          info=SimpleNamespace(run_id="abc"))
    assert tracking.student_encoder(run, 0) == teacher
    student = tracking.student_encoder(run, 25)
    assert "checkpoint_key" not in student and student["checkpoint"].startswith("runs:/abc/")


def _rendered_text(chromium: str, url: str, tmp_path: Path) -> str:
    """The visible text of ``url`` once the MLflow UI's JavaScript has run in headless chromium."""
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=20000", "--dump-dom", url], capture_output=True, text=True,
                          timeout=120)
    page = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


@pytest.mark.slow
def test_the_printed_mlflow_address_opens_the_runs_table_in_the_ui(stack: dict[str, str], chromium: str,
                                                                    cells: list[CellCfg], tmp_path: Path) -> None:
    uri = stack["tracking_uri"]
    exp_id = tracking.ensure_experiment("ui-runs-table", uri, "two cells")
    cell = next(c for c in cells if c.attack.name == "pgd" and c.attack.eps > 0)
    with tracking.CellRun(cell, "attack", exp_id, uri):
        pass
    shown = _rendered_text(chromium, tracking.runs_page(uri, exp_id), tmp_path)
    assert "Run Name" in shown and tracking.cells.run_name(cell, "attack") in shown, shown[:2000]
    plain = _rendered_text(chromium, f"{uri}/#/experiments/{exp_id}", tmp_path)
    assert "MLflow" in plain and "Run Name" not in plain  # without the view the UI opens its GenAI overview


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
