"""The written tables, opened and read: each row holds the numbers of the runs it stands for."""
from __future__ import annotations

import pandas as pd
import pytest

from ssl_robust.attacks import ATTACKS
from ssl_robust.report import write_report
from ssl_robust.tasks import TASKS
from tests.report.fake import sweep

pytestmark = pytest.mark.slow  # renders a whole report: seconds

EPS_255 = "8"  # the report's reference eps


def markdown_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tables")
    cells = sweep(root / "runs", n=20)
    page = write_report(cells.rows, root / "report", artifacts=cells.artifacts)
    return cells, page.parent


@pytest.mark.parametrize("task", ["classification", "segmentation", "depth"])
def test_task_tables_hold_each_runs_clean_and_attacked_scores(report, task: str) -> None:
    rows, out = report[0].rows, report[1]
    spec = TASKS.get(task)
    metric = spec.metric
    csv = pd.read_csv(out / f"table_{task}.csv").set_index("Encoder")
    markdown = {row["Encoder"]: row for row in markdown_rows((out / f"table_{task}.md").read_text())}
    runs = [r for r in rows if r["task"] == task and r["eps_255"] == EPS_255]
    assert set(csv.index) == set(markdown) == {r["encoder"] for r in runs}
    for run in runs:
        label = ATTACKS.get(run["attack"]).label
        expected = {f"Clean {spec.label}": run[f"clean/{metric}"], f"{label} {spec.label}": run[f"adv/{metric}"]}
        for column, value in expected.items():
            assert csv.at[run["encoder"], column] == pytest.approx(value, abs=1e-9), (run["run_id"], column)
            shown = markdown[run["encoder"]][f"{column} {spec.arrow()}"]
            assert shown.split(" [")[0] == f"{value:.2f}", (run["run_id"], column, shown)


@pytest.mark.parametrize("task", ["classification", "depth"])
def test_worst_case_column_is_the_mean_over_items_of_each_items_worst_attack(report, task: str) -> None:
    """Recounted from the runs' per-sample files: per item, the worst attacked score over the attacks."""
    cells, out = report
    spec = TASKS.get(task)
    column = {"classification": "adv_correct", "depth": "adv_rmse"}[task]
    csv = pd.read_csv(out / f"table_{task}.csv").set_index("Encoder")
    for encoder in csv.index:
        runs = [r for r in cells.rows if r["task"] == task and r["eps_255"] == EPS_255 and r["encoder"] == encoder]
        per_item = pd.concat([pd.read_csv(cells.artifacts[r["run_id"]] / "per_sample.csv").set_index("index")[column]
                              for r in runs], axis=1)
        worst = per_item.min(axis=1) if spec.higher_is_better else per_item.max(axis=1)
        assert len(runs) == 3 and csv.at[encoder, f"Worst case {spec.label}"] == pytest.approx(worst.mean(), abs=1e-9)
