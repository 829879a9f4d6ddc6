"""Every number of the tables is its run's metric; the worst case is a recomputation from the per-sample
files; intervals shrink with more test items; partial sweeps render with empty cells."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_robust.report import write_report
from ssl_robust.report.intervals import bootstrap_mean, bootstrap_miou, wilson
from ssl_robust.worst import miou_of, worst_miou_pick
from tests.report.fake import METRIC, TASK_ATTACK, params, sweep
from tests.test_worst import INTER, UNION

pytestmark = pytest.mark.slow  # each renders a whole report: seconds

LABEL = {"classification": "Accuracy", "segmentation": "mIoU", "depth": "RMSE"}
ATTACK_COLUMN = {"embed": "EmbedAttack", "pgd": "PGD", "segpgd": "SegPGD", "depthpgd": "DepthPGD (SILog)",
                 "noise": "Uniform noise"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], Path]:
    root = tmp_path_factory.mktemp("numbers")
    cells = sweep(root / "runs")
    write_report(cells.rows, root / "report", artifacts=cells.artifacts)
    return cells.rows, root / "report"


def test_every_table_number_is_the_metric_of_its_run(report: tuple[list[dict], Path]) -> None:
    rows, out = report
    checked = 0
    for task, label in LABEL.items():
        table = pd.read_csv(out / f"table_{task}.csv")
        assert len(table) == 2
        for _, line in table.iterrows():
            runs = [r for r in rows if r["task"] == task and r["encoder"] == line["Encoder"]
                    and float(r["eps"]) == pytest.approx(8 / 255, abs=1e-6)]
            for run in runs:
                assert line[f"Clean {label}"] == run[f"clean/{METRIC[task]}"]
                assert line[f"{ATTACK_COLUMN[run['attack']]} {label}"] == run[f"adv/{METRIC[task]}"]
                checked += 2
    assert checked == 2 * 3 * 3 * 2
    curves = pd.read_csv(out / "curves.csv")
    by_run = {r["run_id"]: r for r in rows}
    assert all(p["adv"] == by_run[p["run_id"]][f"adv/{METRIC[p['task']]}"] for _, p in curves.iterrows())


def _segmentation_arrays(run_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The attacks' per-image intersections and unions [A, N, C], merged on the item index."""
    loaded = [np.load(d / "per_image_iou.npz") for d in run_dirs]
    index = sorted(loaded[0]["index"].tolist())
    rows = [[int(np.flatnonzero(data["index"] == item)[0]) for item in index] for data in loaded]
    return (np.stack([data["adv_inter"][r] for data, r in zip(loaded, rows)]),
            np.stack([data["adv_union"][r] for data, r in zip(loaded, rows)]))


def _greedy_miou(inter: np.ndarray, union: np.ndarray) -> float:
    """mIoU of each image's lowest per-image mIoU over the attacks."""
    chosen_i, chosen_u = [], []
    for n in range(inter.shape[1]):
        per_image = [np.mean([a / b for a, b in zip(i[n], u[n]) if b > 0]) for i, u in zip(inter, union)]
        k = int(np.argmin(per_image))
        chosen_i.append(inter[k, n]), chosen_u.append(union[k, n])
    i, u = np.sum(chosen_i, 0), np.sum(chosen_u, 0)
    return float(np.mean(i[u > 0] / u[u > 0]))


def _recompute(run_dirs: list[Path], task: str) -> float:
    """Independently of the report: merge the attacks' files on the item index, take the worst."""
    if task == "segmentation":
        inter, union = _segmentation_arrays(run_dirs)
        pick = worst_miou_pick(inter, union)
        i, u = inter[pick, np.arange(pick.size)].sum(0), union[pick, np.arange(pick.size)].sum(0)
        return float(np.mean(i[u > 0] / u[u > 0]))
    column = "adv_correct" if task == "classification" else "adv_rmse"
    merged = None
    for k, d in enumerate(run_dirs):
        one = pd.read_csv(d / "per_sample.csv")[["index", column]].rename(columns={column: f"a{k}"})
        merged = one if merged is None else merged.merge(one, on="index", validate="1:1")
    scores = merged.drop(columns="index")
    return float((scores.min(axis=1) if task == "classification" else scores.max(axis=1)).mean())


def test_worst_case_equals_a_recomputation_from_the_per_sample_files(report: tuple[list[dict], Path]) -> None:
    rows, out = report
    worst = pd.read_csv(out / "worst_case.csv")
    assert len(worst) == 2 * 3 * 3 and worst["Worst case"].notna().all()
    runs_dir = out.parent / "runs"
    for _, line in worst.iterrows():
        run_ids = line["Runs"].split()
        assert len(run_ids) == 3  # EmbedAttack, the task's attack, noise
        expected = _recompute([runs_dir / r / "results" for r in run_ids], line["Task"])
        assert line["Worst case"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        scores = [next(r for r in rows if r["run_id"] == i)[f"adv/{METRIC[line['Task']]}"] for i in run_ids]
        if line["Task"] == "depth":
            assert line["Worst case"] >= max(scores) - 1e-12
        else:
            assert line["Worst case"] <= min(scores) + 1e-12
        if line["Task"] == "segmentation":
            greedy = _greedy_miou(*_segmentation_arrays([runs_dir / r / "results" for r in run_ids]))
            assert line["Worst case"] <= greedy + 1e-12
        assert line["Worst case lo"] <= line["Worst case"] + 1e-9 and line["Worst case hi"] >= line["Worst case"] - 0.05


def test_a_segmentation_worst_case_is_not_above_any_attack_when_per_image_choice_would_be(tmp_path: Path) -> None:
    """Each image's lowest per-image mIoU would give 0.4722, above SegPGD's own 0.3968."""
    rows, artifacts = [], {}
    for k, attack in enumerate(("embed", "segpgd")):
        run_id = f"nm{k}"
        folder = tmp_path / run_id / "results"
        folder.mkdir(parents=True)
        index = np.array([7, 10, 13])
        np.savez(folder / "per_image_iou.npz", index=index, clean_inter=UNION[k], clean_union=UNION[k],
                 adv_inter=INTER[k], adv_union=UNION[k])
        pd.DataFrame({"index": index, "clean_pixel_acc": 1.0, "adv_pixel_acc": 0.5, "attack_loss": 1.0}) \
            .to_csv(folder / "per_sample.csv", index=False)
        row = params("dinov2_vits14", "voc2012", "segmentation", attack, 8 / 255, run_id, 3)
        row.update({"clean/miou": 1.0, "adv/miou": miou_of(INTER[k], UNION[k]), "n_samples": 3.0,
                    "check/delta_in_ball": 1.0, "check/all_passed": 1.0})
        rows.append(row)
        artifacts[run_id] = folder
    write_report(rows, tmp_path / "report", artifacts=artifacts)
    worst = pd.read_csv(tmp_path / "report" / "worst_case.csv")["Worst case"].item()
    assert worst <= min(r["adv/miou"] for r in rows)
    assert worst == pytest.approx(0.3125)


def test_the_table_holds_the_worst_case_of_its_eps(report: tuple[list[dict], Path]) -> None:
    _, out = report
    worst = pd.read_csv(out / "worst_case.csv")
    for task, label in LABEL.items():
        table = pd.read_csv(out / f"table_{task}.csv")
        for _, line in table.iterrows():
            same = worst[(worst["Task"] == task) & (worst["Encoder"] == line["Encoder"]) & (worst["ε"] == "8/255")]
            assert line[f"Worst case {label}"] == same["Worst case"].item()


@pytest.mark.slow
def test_intervals_shrink_when_the_number_of_items_grows(tmp_path: Path) -> None:
    assert np.diff(wilson(32, 64))[0] > np.diff(wilson(128, 256))[0] > np.diff(wilson(512, 1024))[0]
    lo, hi = wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    rng = np.random.default_rng(0)
    assert np.diff(bootstrap_mean(rng.random(40)))[0] > np.diff(bootstrap_mean(rng.random(400)))[0]
    u = rng.integers(1, 50, (400, 3))
    i = (u * rng.random((400, 3))).astype(int)
    assert np.diff(bootstrap_miou(i[:40], u[:40]))[0] > np.diff(bootstrap_miou(i, u))[0]
    widths = {}
    for n in (30, 300):
        cells = sweep(tmp_path / f"runs{n}", n=n)
        write_report(cells.rows, tmp_path / f"report{n}", artifacts=cells.artifacts)
        for task, label in LABEL.items():
            table = pd.read_csv(tmp_path / f"report{n}" / f"table_{task}.csv")
            for column in (f"Clean {label}", f"EmbedAttack {label}", f"Worst case {label}"):
                widths[n, task, column] = (table[f"{column} hi"] - table[f"{column} lo"]).mean()
    for (n, task, column), width in widths.items():
        if n == 30:
            assert widths[300, task, column] < width, (task, column)


def test_a_partial_sweep_renders_with_empty_cells(tmp_path: Path) -> None:
    cells = sweep(tmp_path / "runs", n=20)
    dropped = {r["run_id"] for r in cells.rows if r["encoder"] == "dino_vitb16" and r["attack"] == "pgd"
               and float(r["eps"]) > 0.03}
    rows = [r for r in cells.rows if r["run_id"] not in dropped]
    artifacts = {k: v for k, v in cells.artifacts.items() if not (k.endswith("1") or k.endswith("7"))}
    page = write_report(rows, tmp_path / "report", artifacts=artifacts).read_text()
    table = pd.read_csv(tmp_path / "report" / "table_classification.csv").set_index("Encoder")
    assert np.isnan(table.at["dino_vitb16", "PGD Accuracy"])
    assert table.at["dinov2_vits14", "PGD Accuracy"] == next(
        r["adv/acc"] for r in rows if r["encoder"] == "dinov2_vits14" and r["attack"] == "pgd"
        and float(r["eps"]) == pytest.approx(8 / 255, abs=1e-6))
    worst = pd.read_csv(tmp_path / "report" / "worst_case.csv")
    assert worst["Worst case"].isna().any() and worst["Note"].str.contains("no per-sample results").any()
    markdown = (tmp_path / "report" / "table_classification.md").read_text()
    assert "| cifar10 | dino_vitb16 |" in markdown and "|  |" in markdown
    assert "<td class=\"num\"></td>" in page


def test_table_columns_follow_the_poster_then_the_other_attacks(report: tuple[list[dict], Path]) -> None:
    _, out = report
    for task, label in LABEL.items():
        shown = [c for c in pd.read_csv(out / f"table_{task}.csv").columns if not c.endswith((" lo", " hi", " failed"))]
        assert shown == ["Dataset", "Encoder", f"Clean {label}", f"EmbedAttack {label}",
                         f"{ATTACK_COLUMN[TASK_ATTACK[task]]} {label}", f"Uniform noise {label}",
                         f"Worst case {label}", "Worst case over"]
