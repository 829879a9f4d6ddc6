"""``ssl-robust report`` against a real (SQLite) MLflow store: it fetches every cell's ``results/``
artifacts, the DeACL runs and a search's trials, and writes the whole set."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from ssl_robust import tracking
from ssl_robust.cli import main
from ssl_robust.report.fetch import referenced_deacl_runs
from tests.report.fake import Cells, sweep

pytestmark = pytest.mark.slow  # a SQLite tracking store and a whole report per test: seconds each


def _log(client: MlflowClient, exp: str, tags: dict, params: dict, metrics: dict, step: int = 0) -> str:
    run_id = client.create_run(exp, tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(k, float(v), 0, step) for k, v in metrics.items()])
    return run_id


@pytest.fixture()
def store(tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = tracking_uri
    name = "report-e2e"
    client, exp = MlflowClient(uri), tracking.ensure_experiment(name, uri)
    parent = _log(client, exp, {"phase": "search", "search": name}, {}, {})
    trials = tmp_path / "trials.csv"
    pd.DataFrame({"number": [0, 1, 2], "state": ["COMPLETE"] * 3, "probe/clean_acc": [0.9, 0.8, 0.85],
                  "probe/embed_acc": [0.2, 0.5, 0.1], "pareto": [True, True, False]}).to_csv(trials, index=False)
    client.log_artifact(parent, str(trials), "pareto")
    deacl = _log(client, exp, {"phase": "deacl", "deacl_id": "d1", "search": name, "mlflow.parentRunId": parent},
                 {"gamma": 2.0, "dense_weight": 0.0, "epochs": 1, "encoder.name": "dino_vitb16"},
                 {"probe/clean_acc": 0.8, "probe/embed_acc": 0.5}, step=1)
    client.set_terminated(deacl, "FINISHED")
    cells = sweep(tmp_path / "made", n=20)
    checkpoint = f"runs:/{deacl}/checkpoints/epoch_001.safetensors"
    for attack in ("embed", "pgd", "noise"):
        cells.add("dino_vitb16", "cifar10", "classification", attack, 8 / 255, 0.75, 0.4, n=20, checkpoint=checkpoint)
    for row in cells.rows:
        metrics = {k: v for k, v in row.items() if "/" in k and isinstance(v, float)} | {"n_samples": row["n_samples"]}
        params = {k: v for k, v in row.items() if k not in metrics and k not in ("run_id", "cell_id", "start_time")}
        run = _log(client, exp, {"phase": "attack", "cell_id": row["cell_id"]}, params, metrics)
        client.log_artifacts(run, str(cells.artifacts[row["run_id"]]), "results")
        client.set_terminated(run, "FINISHED")
    return uri, name


def test_report_fetches_artifacts_deacl_runs_and_the_search(store: tuple[str, str], tmp_path: Path) -> None:
    uri, name = store
    out = tmp_path / "out"
    assert main(["report", name, "--out", str(out), "--tracking-uri", uri]) == 0
    worst = pd.read_csv(out / "worst_case.csv")
    assert len(worst) == 2 * 3 * 3 + 1 and worst["Worst case"].notna().all()  # every cell's per-sample files
    table = pd.read_csv(out / "table_segmentation.csv")
    assert table["Clean mIoU lo"].notna().all()  # bootstrap from the fetched per-image IoU
    points = pd.read_csv(out / "deacl_points.csv")
    assert sorted(points["epoch"].unique()) == [0, 1] and set(points["fine_tune"]) == {"DeACL γ=2"}
    front = pd.read_csv(out / f"pareto_{name}.csv")
    assert front["number"].tolist() == [1, 0]
    page = (out / "index.html").read_text()
    assert f"MLflow experiment &#x27;{name}&#x27; at sqlite:///" in page and "DeACL search" in page


def test_report_of_an_empty_experiment_says_so(tmp_path: Path, tracking_uri: str) -> None:
    uri = tracking_uri
    tracking.ensure_experiment("empty", uri)
    assert main(["report", "empty", "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 2


def test_a_report_of_a_misspelt_experiment_suggests_the_near_names(tmp_path: Path, tracking_uri: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    uri = tracking_uri
    for name in ("quickstart", "deacl_quickstart", "poster"):
        tracking.ensure_experiment(name, uri)
    assert main(["report", "quickstartt", "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'quickstart'" in err and "experiments here: deacl_quickstart, poster, quickstart" in err


def test_cells_without_results_still_render(tmp_path: Path, tracking_uri: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = tracking_uri
    client, exp = MlflowClient(uri), tracking.ensure_experiment("old", uri)
    cells = Cells(tmp_path / "made")
    row = cells.add("dinov2_vits14", "cifar10", "classification", "pgd", 8 / 255, 0.9, 0.1, n=10)
    metrics = {k: v for k, v in row.items() if "/" in k and isinstance(v, float)}
    params = {k: v for k, v in row.items() if k not in metrics and k not in ("run_id", "cell_id", "start_time")}
    client.set_terminated(_log(client, exp, {"phase": "attack", "cell_id": "c"}, params, metrics), "FINISHED")
    assert main(["report", "old", "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 0
    assert pd.read_csv(tmp_path / "out" / "table_classification.csv")["PGD Accuracy"].tolist() == [row["adv/acc"]]


def test_the_deacl_runs_of_students_from_another_experiment_are_fetched(tracking_uri: str) -> None:
    uri = tracking_uri
    client = MlflowClient(uri)
    fine_tunes = tracking.ensure_experiment("deacl_poster", uri)
    run = _log(client, fine_tunes, {"phase": "deacl"}, {"data.name": "imagenet", "gamma": 2.0, "epochs": 101}, {})
    rows = [{"encoder.checkpoint": f"runs:/{run}/checkpoints/epoch_101.safetensors"}, {"encoder.checkpoint": ""}]
    fetched = referenced_deacl_runs(rows, known=[], tracking_uri=uri)
    assert [(r["run_id"], r["data.name"], r["epochs"]) for r in fetched] == [(run, "imagenet", "101")]
    assert referenced_deacl_runs(rows, known=[run], tracking_uri=uri) == []
