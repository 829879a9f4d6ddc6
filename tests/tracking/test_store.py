"""The MLflow store (``ssl_robust.tracking.store``): tracking URIs made absolute, experiments created
once however many processes open a fresh store, with the sweep's description, opening on the runs
table (in the UI too)."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_robust import tracking
from ssl_robust.config import CellCfg
from tests.helpers import CHROMIUM_FLAGS


def test_absolute_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.absolute_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.absolute_tracking_uri("sqlite:///x.db") == f"sqlite:///{tmp_path.resolve()}/x.db"
    assert tracking.absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.absolute_tracking_uri(None) == "http://mlflow:5000"


def _open_store(uri: str, start: float) -> str:
    while time.time() < start:
        time.sleep(0.01)
    return tracking.ensure_experiment("race", uri)


@pytest.mark.slow
def test_three_processes_open_a_fresh_sqlite_store_at_once(tracking_uri: str) -> None:
    import multiprocessing

    uri = tracking_uri
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        start = time.time() + 8  # after the children's imports
        ids = pool.starmap(_open_store, [(uri, start)] * 3, chunksize=1)
    assert len(set(ids)) == 1


def test_a_sweeps_description_becomes_its_experiments_description(tracking_uri: str) -> None:
    uri = tracking_uri
    exp_id = tracking.ensure_experiment("described", uri, "tiny ViTs x synthetic")
    assert MlflowClient(uri).get_experiment(exp_id).tags["mlflow.note.content"] == "tiny ViTs x synthetic"
    tracking.ensure_experiment("described", uri, "a new description")
    assert MlflowClient(uri).get_experiment(exp_id).tags["mlflow.note.content"] == "a new description"
    assert "mlflow.note.content" not in MlflowClient(uri).get_experiment(tracking.ensure_experiment("plain", uri)).tags


def test_experiments_open_on_the_runs_table(store: tuple[str, str]) -> None:
    uri, exp_id = store
    tags = MlflowClient(uri).get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def _rendered_text(chromium: str, url: str, tmp_path: Path) -> str:
    """The visible text of ``url`` once the MLflow UI's JavaScript has run in headless chromium."""
    done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=20000", "--dump-dom", url], capture_output=True, text=True,
                          timeout=120)
    page = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


@pytest.mark.services
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
