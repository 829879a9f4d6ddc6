"""The report turns finished cell results into the poster's tables, plots and a checks list."""
from pathlib import Path

import pytest

from ssl_robust.report import failed_checks, poster_table, reference_eps, results_frame, write_report


def _row(encoder, dataset, task, attack, eps, clean, adv, checkpoint="", passed=1.0):
    key = {"classification": "acc", "segmentation": "miou", "depth": "rmse"}[task]
    return {"encoder": encoder, "encoder.checkpoint": checkpoint, "dataset": dataset, "task": task,
            "attack": attack, "eps": str(eps), f"clean/{key}": clean, f"adv/{key}": adv,
            "check/delta_in_ball": passed, "check/all_passed": passed}


@pytest.fixture()
def rows():
    out = []
    for eps, embed, pgd in [(0.0, 0.9, 0.9), (4 / 255, 0.3, 0.1), (8 / 255, 0.1, 0.0)]:
        out.append(_row("dinov2_vits14", "cifar10", "classification", "embed", eps, 0.9, embed))
        out.append(_row("dinov2_vits14", "cifar10", "classification", "pgd", eps, 0.9, pgd))
    out.append(_row("dino_vitb16", "nyuv2", "depth", "depthpgd", 8 / 255, 0.5, 2.6, checkpoint="/ckpt/deacl.pt"))
    return out


def test_table_holds_clean_and_each_attack_at_the_reference_eps(rows):
    frame = results_frame(rows)
    table = poster_table(frame, "classification", reference_eps(frame))
    assert list(table.columns) == ["Dataset", "Encoder", "Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]
    assert table.iloc[0][["Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]].tolist() == [0.9, 0.1, 0.0]


def test_reference_eps_defaults_to_8_over_255_and_rejects_an_unswept_value(rows):
    frame = results_frame(rows)
    assert reference_eps(frame) == pytest.approx(8 / 255)
    assert reference_eps(frame, 4 / 255) == pytest.approx(4 / 255)
    with pytest.raises(ValueError, match="not in the sweep"):
        reference_eps(frame, 2 / 255)


def test_fine_tuned_checkpoint_gets_its_own_encoder_label(rows):
    frame = results_frame(rows)
    assert "dino_vitb16 (deacl)" in set(frame["encoder_label"])


def test_failed_checks_lists_the_cell_and_the_check(rows):
    rows.append(_row("dinov2_vits14", "cifar10", "classification", "pgd", 16 / 255, 0.9, 0.0, passed=0.0))
    bad = failed_checks(results_frame(rows))
    assert len(bad) == 1 and "check/delta_in_ball" in bad.iloc[0]["failed"]


def test_write_report_writes_page_tables_and_one_plot_per_dataset(rows, tmp_path: Path):
    page = write_report(rows, tmp_path)
    assert page.exists() and "PGD Accuracy" in page.read_text()
    assert (tmp_path / "table_classification.csv").exists() and (tmp_path / "table_depth.csv").exists()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["classification_cifar10.png", "depth_nyuv2.png"]


def test_no_rows_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no finished cells"):
        write_report([], tmp_path)
