"""What ``write_report`` writes (``ssl_robust.report.write``): the page, every table as CSV and
Markdown, PNG figures, each configuration's numbers, the poster section, the example figures; the
cells it is restricted to, and a clear error without any."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ssl_robust.report import write_report
from tests.report.fake import deacl_cells, deacl_runs, sweep


def test_write_report_writes_page_tables_and_one_plot_per_dataset(rows, tmp_path: Path):
    page = write_report(rows, tmp_path)
    assert page.exists() and "PGD Accuracy" in page.read_text()
    assert (tmp_path / "table_classification.csv").exists() and (tmp_path / "table_depth.csv").exists()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["classification_cifar10.png", "depth_nyuv2.png"]
    depth = pd.read_csv(tmp_path / "table_depth.csv")
    assert depth[["Encoder", "Clean RMSE", "DepthPGD (SILog) RMSE"]].values.tolist() == [
        ["dino_vitb16 (deacl)", 0.5, 2.6]]


def test_written_tables_curves_and_page_hold_each_configuration_s_numbers(two_configs, tmp_path: Path):
    page = write_report(two_configs, tmp_path, title="two configs").read_text()
    table = pd.read_csv(tmp_path / "table_classification.csv")
    assert table[["Encoder", "Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]].values.tolist() == [
        ["dinov2_vits14 [steps=10, encoder.image_size=224]", 0.9, 0.3, 0.1],
        ["dinov2_vits14 [steps=20, encoder.image_size=518]", 0.8, 0.2, 0.0]]
    points = pd.read_csv(tmp_path / "curves.csv")
    assert len(points) == 8 and points.groupby(["configuration", "attack"]).size().tolist() == [2, 2, 2, 2]
    assert ">0.10</td>" in page and ">0.00</td>" in page and ">0.05</td>" not in page
    settings = pd.read_csv(tmp_path / "settings.csv").set_index("Section")["Settings"]
    assert "n_samples=64" in settings["data"] and "None" not in " ".join(settings)
    assert "device" not in " ".join(settings)  # a location, not a setting
    assert "Varying" in page and "steps, encoder.image_size" in page


def test_cell_ids_restrict_the_report(two_configs, tmp_path: Path):
    write_report(two_configs, tmp_path, cell_ids={"cell-a1", "cell-a2"})
    table = pd.read_csv(tmp_path / "table_classification.csv")
    assert table[["Encoder", "EmbedAttack Accuracy", "PGD Accuracy"]].values.tolist() == [["dinov2_vits14", 0.3, 0.1]]
    assert len(pd.read_csv(tmp_path / "cells.csv")) == 2
    with pytest.raises(ValueError, match="no finished cells"):
        write_report(two_configs, tmp_path / "none", cell_ids=["not-a-cell"])


def test_no_rows_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no finished cells"):
        write_report([], tmp_path)


# ----------------------------------------------------------------------------- a whole sweep's report


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("outputs")
    cells = deacl_cells(root / "runs")
    runs = deacl_runs()
    trials = pd.DataFrame({"number": range(5), "state": ["COMPLETE"] * 4 + ["PRUNED"],
                           "probe/clean_acc": [0.9, 0.8, 0.7, 0.6, 0.95], "probe/embed_acc": [0.1, 0.4, 0.3, 0.5, 0.6],
                           "pareto": [True, True, False, True, False]})
    page = write_report(cells.rows, root / "report", artifacts=cells.artifacts, deacl_runs=runs,
                        searches={"quick": trials}, source="MLflow experiment 'x'")
    return cells, runs, page


@pytest.mark.slow  # ``written`` renders a whole sweep's report
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


@pytest.mark.slow  # ``written`` renders a whole sweep's report
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


@pytest.mark.slow  # ``written`` renders a whole sweep's report
def test_the_poster_section_counts_the_runs_outside_the_posters_configuration(written) -> None:
    _, _, page = written
    table = pd.read_csv(page.parent / "poster_classification.csv")
    assert table.empty  # the fake sweep runs 10 steps at 224 px, and its DeACL runs are not the poster's recipe
    text = page.read_text()
    assert text.count("No run of this report is in the poster&#x27;s configuration") == 1  # once, not per task
    assert "dino_vitb16 at 224 px" in text and "attack run(s) on its encoders and data sets have other settings" in text


@pytest.mark.slow  # renders a whole sweep's report
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
