"""End to end on real parts: an Optuna search of the tiny DeACL config on a local Ray instance
(2 CPUs), its study in SQLite and its MLflow runs in a SQLite store, all under tmp_path."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator

import optuna
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from ssl_robust.cli import main
from tests.helpers import REPO_ROOT, sqlite_uri
NAME = "e2e-search"


@pytest.fixture(scope="module")
def ray_2cpus() -> Iterator[None]:
    """A real local Ray instance with 2 CPUs (no MLflow server needed: the store is SQLite)."""
    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


@pytest.fixture()
def search_file(tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The quickstart search with 3 trials of 2 epochs, storing everything under tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = yaml.safe_load((REPO_ROOT / "sweeps" / "deacl_search_quickstart.yaml").read_text())
    data.update(name=NAME, n_trials=3, storage=sqlite_uri(tmp_path / "optuna.db"))
    data["deacl"].update(epochs=2, probe={"n_train": 64, "n_samples": 64, "epochs": 10})
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return {"config": str(path), "storage": data["storage"], "tracking": tracking_uri,
            "ray": str(tmp_path / "ray_results")}


def search(files: dict[str, str], *extra: str) -> int:
    return main(["search", "--config", files["config"], "--tracking-uri", files["tracking"],
                 "--storage-path", files["ray"], *extra])


def runs_by_phase(uri: str) -> dict[str, list[Any]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(NAME)
    runs: dict[str, list[Any]] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        runs.setdefault(run.data.tags.get("phase", ""), []).append(run)
    return runs


@pytest.mark.services
@pytest.mark.slow
def test_search_stores_its_study_and_logs_the_pareto_front(ray_2cpus: None, search_file: dict[str, str],
                                                           tmp_path: Path) -> None:
    assert search(search_file) == 0
    study = optuna.load_study(study_name=NAME, storage=search_file["storage"])
    assert len(study.directions) == 2 and len(study.trials) == 3
    assert study.metric_names == ["probe/clean_acc", "probe/embed_acc"]  # what optuna-dashboard names its axes
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 and 0 <= min(t.values) <= max(t.values) <= 1 for t in complete)
    assert all(t.user_attrs["epoch"] == 2 for t in complete)
    assert all("teacher/probe/embed_acc" in t.user_attrs for t in study.trials)

    runs = runs_by_phase(search_file["tracking"])
    (parent,) = runs["search"]
    children = runs["deacl"]
    assert parent.info.status == "FINISHED" and parent.data.tags["search"] == NAME
    assert len(children) == 3 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} <= {"FINISHED", "FAILED", "KILLED"}
    assert sum(r.info.status == "FINISHED" for r in children) == len(complete)
    assert parent.data.metrics["front/size"] == len(study.best_trials) >= 1

    client = MlflowClient(search_file["tracking"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "pareto")} == {
        "pareto/pareto.png", "pareto/trials.csv"}
    local = Path(parent.info.artifact_uri.removeprefix("file://")) / "pareto"
    assert local.is_relative_to(tmp_path) and (local / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(io.StringIO((local / "trials.csv").read_text()))
    assert list(table["number"]) == [0, 1, 2] and {"lr", "gamma", "dense_weight"} <= set(table)
    assert set(table.loc[table["pareto"], "number"]) == {t.number for t in study.best_trials}
    assert set(table["run_id"]) == {r.info.run_id for r in children}

    assert search(search_file, "n_trials=4") == 0  # a rerun continues the study: one more trial
    study = optuna.load_study(study_name=NAME, storage=search_file["storage"])
    assert len(study.trials) == 4
    runs = runs_by_phase(search_file["tracking"])
    assert [r.info.run_id for r in runs["search"]] == [parent.info.run_id]
    assert runs["search"][0].info.status == "FINISHED" and len(runs["deacl"]) == 4
    assert not any(r.info.status == "RUNNING" for r in runs["deacl"])


def test_dry_run_prints_the_space_and_runs_nothing(search_file: dict[str, str], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert search(search_file, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "lr             log-uniform [0.0001, 0.003]" in out and "dense_weight" in out
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mlflow.db").exists()
    assert search(search_file, "space.momentum.low=1") == 2
    assert "space.momentum" in capsys.readouterr().err
