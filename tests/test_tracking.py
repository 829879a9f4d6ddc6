"""Tracking on the embedded default (SQLite file + local artifacts): runs, lookups, artifacts."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import yaml
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from ssl_robust.sweep_config import expand, parse_sweep
from tests.helpers import tiny_sweep


@pytest.fixture(scope="module")
def cells() -> list[CellCfg]:
    return expand(parse_sweep(tiny_sweep("t")))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A SQLite tracking URI (created once: migrations take seconds) and an experiment id."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    yield uri, tracking.ensure_experiment("tracking-tests", uri)


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


def test_finished_failed_and_stale_runs(store: tuple[str, str], cells: list[CellCfg]) -> None:
    uri, exp_id = store
    with tracking.CellRun(cells[0], "attack", exp_id, uri, sweep="t") as run:
        run.log_metrics({"clean/acc": 0.5, "adv/acc": 0.25})
    with pytest.raises(RuntimeError), tracking.CellRun(cells[1], "attack", exp_id, uri) as failed:
        raise RuntimeError("cell crashed")
    stale = tracking.CellRun(cells[2], "attack", exp_id, uri).__enter__()  # a worker killed mid-cell
    client = MlflowClient(uri)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert tracking.finished_cells("tracking-tests", uri) == {cells[0].cell_id: run.run_id}
    got = client.get_run(run.run_id)
    assert got.data.metrics["adv/acc"] == 0.25
    assert got.data.tags["cell_id"] == cells[0].cell_id and got.data.tags["phase"] == "attack"
    assert got.data.tags["code_version"].startswith("0.")
    assert tracking.fail_stale_runs("tracking-tests", "attack", uri) == [stale.run_id]
    assert client.get_run(stale.run_id).info.status == "FAILED"
    rows = tracking.run_results("tracking-tests", "attack", uri)
    assert [r["cell_id"] for r in rows] == [cells[0].cell_id] and rows[0]["clean/acc"] == 0.5


def test_local_path_resolves_runs_file_and_plain_paths(store: tuple[str, str], cells: list[CellCfg],
                                                          tmp_path: Path) -> None:
    uri, exp_id = store
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
    assert tracking.finished_runs("tracking-tests", "head", uri) == {cells[0].head_id: run.run_id}
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
