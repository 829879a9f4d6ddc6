"""What the report writes: every table as CSV and Markdown, PNG figures, one offline page; the poster's
numbers side by side; the DeACL figure's points; one colour per encoder and one line style per attack."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ssl_robust.attacks import ATTACKS
from ssl_robust.report import results_frame, write_report
from ssl_robust.report.deacl import deacl_points
from ssl_robust.report.intervals import run_intervals
from ssl_robust.report.plots import Style
from ssl_robust.report.poster import REFERENCE, load_reference
from tests.report.fake import sweep

pytestmark = pytest.mark.slow  # each renders a whole report: seconds

RUN_A, RUN_B = "3f9c2a71d0b44e5e9d1c", "a81be04c9d2f4f11b7e0"


def deacl_cells(root: Path):
    """The sweep plus students of dino_vitb16 at epochs 1 and 2 of two DeACL runs (teacher: the sweep's)."""
    cells = sweep(root, n=30)
    for run, gain in ((RUN_A, 0.15), (RUN_B, 0.03)):
        for epoch in (1, 2):
            checkpoint = f"runs:/{run}/checkpoints/epoch_{epoch:03d}.safetensors"
            for attack, strength in (("embed", 0.5), ("pgd", 0.8)):
                cells.add("dino_vitb16", "cifar10", "classification", attack, 8 / 255, 0.8 - 0.03 * epoch,
                          0.8 * (1 - strength) + gain * epoch, n=30, checkpoint=checkpoint)
    return cells


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("outputs")
    cells = deacl_cells(root / "runs")
    runs = [{"run_id": RUN_A, "gamma": "2.0", "dense_weight": "0.0"}, {"run_id": RUN_B, "gamma": "0.0",
                                                                        "dense_weight": "0.5"}]
    trials = pd.DataFrame({"number": range(5), "state": ["COMPLETE"] * 4 + ["PRUNED"],
                           "probe/clean_acc": [0.9, 0.8, 0.7, 0.6, 0.95], "probe/embed_acc": [0.1, 0.4, 0.3, 0.5, 0.6],
                           "pareto": [True, True, False, True, False]})
    page = write_report(cells.rows, root / "report", artifacts=cells.artifacts, deacl_runs=runs,
                        searches={"quick": trials}, source="MLflow experiment 'x'")
    return cells, runs, page


def test_every_table_is_written_as_csv_and_markdown_and_every_figure_as_png(written) -> None:
    _, _, page = written
    out = page.parent
    tables = {p.stem for p in out.glob("*.md")}
    assert {"table_classification", "table_segmentation", "table_depth", "worst_case", "checks", "runs",
            "poster_classification", "poster_segmentation", "poster_depth", "deacl_classification",
            "pareto_quick"} <= tables
    assert all((out / f"{stem}.csv").exists() for stem in tables)
    pngs = {p.name for p in out.glob("*.png")}
    assert {"classification_cifar10.png", "segmentation_voc2012.png", "depth_nyuv2.png", "deacl.png",
            "pareto_quick.png", "loss_classification_cifar10.png"} <= pngs
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in pngs)


def test_the_page_is_self_contained_and_says_what_it_used(written) -> None:
    cells, _, page = written
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # no CDN, nothing fetched
    assert "<link" not in text and "<script" not in text and "<style>" in text
    assert text.count("data:image/png;base64,") == len(list(page.parent.glob("*.png")))
    assert "MLflow experiment &#x27;x&#x27;" in text and "tables at ε = 8/255" in text
    assert "Settings shared by every run" in text and "95% interval" in text
    assert all(row["run_id"] in text for row in cells.rows)  # which runs: every one is listed
    assert "Clean Accuracy ↑" in text and "Clean RMSE ↓" in text  # the better direction in the headers


def test_the_poster_reference_holds_every_row_of_its_three_tables() -> None:
    reference = load_reference(REFERENCE)
    assert len(reference) == 28
    assert reference.groupby("task").size().to_dict() == {"classification": 12, "segmentation": 12, "depth": 4}
    assert set(reference["eps"]) == {"8/255"} and set(reference["encoder_type"]) == {"Standard", "DeACL"}
    assert set(reference["encoder"]) == {"dinov2_vits14", "dinov2_vitb14", "dino_vitb16"}
    assert reference[["clean", "embed", "task_attack"]].notna().all().all()
    deacl_stl10 = reference[(reference["dataset"] == "stl10") & (reference["encoder_type"] == "DeACL")].iloc[0]
    assert deacl_stl10[["clean", "embed", "task_attack"]].tolist() == [0.97, 0.83, 0.23]


def test_the_poster_section_counts_the_runs_outside_the_posters_configuration(written) -> None:
    _, _, page = written
    table = pd.read_csv(page.parent / "poster_classification.csv")
    assert table.empty  # the fake sweep runs 10 steps at 224 px, and its DeACL runs are not the poster's recipe
    text = page.read_text()
    assert text.count("No run of this report is in the poster&#x27;s configuration") == 1  # once, not per task
    assert "dino_vitb16 at 224 px" in text and "attack run(s) on its encoders and data sets have other settings" in text


def test_deacl_points_run_from_the_teacher_at_epoch_0(written) -> None:
    cells, runs, _ = written
    frame = results_frame(cells.rows)
    points = deacl_points(frame, runs, 8 / 255, run_intervals(frame, {}))
    assert set(points["fine_tune"]) == {"DeACL γ=2", "DeACL γ=0, dense_weight=0.5"}
    for tune, line in points.groupby("fine_tune"):
        assert sorted(line["epoch"].unique()) == [0, 1, 2]
        assert set(line["series"]) == {"clean", "embed", "pgd", "noise"} - ({"noise"} - set(line["series"]))
    teacher = [r for r in cells.rows if r["encoder"] == "dino_vitb16" and r["task"] == "classification"
               and not r["encoder.checkpoint"] and r["attack"] == "pgd"
               and float(r["eps"]) == pytest.approx(8 / 255, abs=1e-6)][0]
    at0 = points[(points["epoch"] == 0) & (points["series"] == "pgd")]
    assert (at0["value"] == teacher["adv/acc"]).all() and len(at0) == 2
    student = [r for r in cells.rows if r["encoder.checkpoint"].endswith(f"{RUN_B}/checkpoints/epoch_002.safetensors")
               and r["attack"] == "embed"][0]
    one = points[(points["deacl_run"] == RUN_B) & (points["epoch"] == 2) & (points["series"] == "embed")]
    assert one["value"].item() == student["adv/acc"]


def test_one_colour_per_encoder_and_one_line_style_per_attack() -> None:
    style = Style(["b", "a", "c", "a"])
    assert len(set(style.colours.values())) == 3 and style.colour("a") == Style(["a", "c", "b"]).colour("a")
    series = ["clean", "worst", *ATTACKS.names()]
    looks = {(str(style.line(s)), style.width(s)) for s in series}
    assert len(looks) == len(series)


def test_the_task_section_shows_the_example_figure_of_its_own_attack(tmp_path: Path) -> None:
    cells = sweep(tmp_path / "runs", n=10)
    for row in cells.rows:
        if row["attack"] in ("pgd", "embed") and row["task"] == "classification" and row["eps_255"] == "8":
            Image.new("RGB", (30, 20), (255, 0, 0) if row["attack"] == "pgd" else (0, 0, 255)).save(
                cells.artifacts[row["run_id"]] / "adv_examples.png")
    page = write_report(cells.rows, tmp_path / "report", artifacts=cells.artifacts)
    with Image.open(tmp_path / "report" / "examples_classification_cifar10.png") as shown:
        assert shown.getpixel((0, 0)) == (255, 0, 0)  # PGD's figure: the task's own attack, not EmbedAttack's
    text = page.read_text()
    assert "attacked by PGD at ε = 8/255" in text and "examples_classification_cifar10.png" in text
    assert not (tmp_path / "report" / "examples_depth_nyuv2.png").exists()  # no cell logged one
