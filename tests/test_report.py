"""The report turns finished cell results into the poster's tables, plots and a checks list, and never
merges runs of different configurations."""
from pathlib import Path

import pandas as pd
import pytest

from ssl_robust.report import (curves, encoder_label, failed_checks, poster_table, reference_eps, results_frame,
                               summary_table, write_report)
from ssl_robust.report.labels import fine_tune_labels


def _row(encoder, dataset, task, attack, eps, clean, adv, checkpoint="", passed=1.0):
    key = {"classification": "acc", "segmentation": "miou", "depth": "rmse"}[task]
    return {"encoder": encoder, "encoder.checkpoint": checkpoint, "dataset": dataset, "task": task,
            "attack": attack, "eps": str(eps), f"clean/{key}": clean, f"adv/{key}": adv,
            "check/delta_in_ball": passed, "check/all_passed": passed}


def _cell(attack, eps, clean, adv, run_id, steps=10, image_size=224, **params):
    """A row as ``tracking.run_results`` gives it: flattened cell config, short names, metrics, ids."""
    row = _row("dinov2_vits14", "cifar10", "classification", attack, eps, clean, adv)
    row.update({"encoder.name": "dinov2_vits14", "encoder.image_size": str(image_size), "encoder.layer": "",
                "data.name": "cifar10", "data.n_samples": "64", "data.root": "/data/cifar10",
                "head.epochs": "10", "head.checkpoint": f"runs:/head-{run_id}/head/head.safetensors",
                "attack.name": attack, "attack.eps": f"{eps:.6g}", "attack.steps": str(steps),
                "attack.step_size": "", "attack.restarts": "1", "attack.stop_when_fooled": "True",
                "seed": "0", "batch_size": "16", "device": "cuda", "steps": str(steps), "eps_255": f"{eps * 255:.4g}",
                "run_id": run_id, "cell_id": f"cell-{run_id}"})
    row.update({k: str(v) for k, v in params.items()})
    return row


@pytest.fixture()
def rows():
    out = []
    for eps, embed, pgd in [(0.0, 0.9, 0.9), (4 / 255, 0.3, 0.1), (8 / 255, 0.1, 0.0)]:
        out.append(_row("dinov2_vits14", "cifar10", "classification", "embed", eps, 0.9, embed))
        out.append(_row("dinov2_vits14", "cifar10", "classification", "pgd", eps, 0.9, pgd))
    out.append(_row("dino_vitb16", "nyuv2", "depth", "depthpgd", 8 / 255, 0.5, 2.6, checkpoint="/ckpt/deacl.pt"))
    return out


@pytest.fixture()
def two_configs():
    """PGD-10 at 224 px and PGD-20 at 518 px in one experiment, each with EmbedAttack and PGD at two eps."""
    return [
        _cell("embed", 8 / 255, 0.9, 0.30, "a1"), _cell("pgd", 8 / 255, 0.9, 0.10, "a2"),
        _cell("embed", 4 / 255, 0.9, 0.50, "a3"), _cell("pgd", 4 / 255, 0.9, 0.40, "a4"),
        _cell("embed", 8 / 255, 0.8, 0.20, "b1", steps=20, image_size=518, device="cpu"),
        _cell("pgd", 8 / 255, 0.8, 0.00, "b2", steps=20, image_size=518),
        _cell("embed", 4 / 255, 0.8, 0.45, "b3", steps=20, image_size=518),
        _cell("pgd", 4 / 255, 0.8, 0.05, "b4", steps=20, image_size=518),
    ]


def test_table_holds_clean_and_each_attack_at_the_reference_eps(rows):
    frame = results_frame(rows)
    table = poster_table(frame, "classification", reference_eps(frame))
    assert list(table.columns) == ["Dataset", "Encoder", "Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]
    assert table.iloc[0][["Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]].tolist() == [0.9, 0.1, 0.0]


def test_different_configurations_never_merge_in_a_table(two_configs):
    table = poster_table(results_frame(two_configs), "classification", 8 / 255)
    assert len(table) == 2
    by_label = table.set_index("Encoder")
    pgd10 = by_label.loc["dinov2_vits14 [steps=10, encoder.image_size=224]"]
    pgd20 = by_label.loc["dinov2_vits14 [steps=20, encoder.image_size=518]"]
    assert pgd10[["Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]].tolist() == [0.9, 0.30, 0.10]
    assert pgd20[["Clean Accuracy", "EmbedAttack Accuracy", "PGD Accuracy"]].tolist() == [0.8, 0.20, 0.00]


def test_identical_configuration_shares_one_row_across_attacks_whatever_the_locations():
    cells = [_cell("embed", 8 / 255, 0.9, 0.3, "e", device="cuda:1", **{"data.root": "/mnt/other"}),
             _cell("pgd", 8 / 255, 0.9, 0.1, "p", device="cpu")]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert table.to_dict("records") == [{"Dataset": "cifar10", "Encoder": "dinov2_vits14", "Clean Accuracy": 0.9,
                                         "EmbedAttack Accuracy": 0.3, "PGD Accuracy": 0.1}]


@pytest.mark.parametrize("field, value", [("data.n_samples", "256"), ("encoder.layer", "9"), ("seed", "1"),
                                          ("head.epochs", "20"), ("batch_size", "64")])
def test_any_other_config_field_splits_rows(field, value):
    cells = [_cell("pgd", 8 / 255, 0.9, 0.1, "x"), _cell("pgd", 8 / 255, 0.9, 0.2, "y", **{field: value})]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert sorted(table["PGD Accuracy"]) == [0.1, 0.2]
    assert all(f"{field}=" in label for label in table["Encoder"])


def test_checkpoints_with_one_file_stem_are_told_apart_by_their_path():
    cells = [_cell("pgd", 8 / 255, 0.9, 0.1, "x", **{"encoder.checkpoint": "/ckpt/a/deacl.pt"}),
             _cell("pgd", 8 / 255, 0.9, 0.2, "y", **{"encoder.checkpoint": "/ckpt/b/deacl.pt"})]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert table["Encoder"].tolist() == ["dinov2_vits14 (deacl) [encoder.checkpoint=/ckpt/a/deacl.pt]",
                                         "dinov2_vits14 (deacl) [encoder.checkpoint=/ckpt/b/deacl.pt]"]


def test_different_per_attack_settings_get_their_own_column_not_an_average():
    cells = [_cell("embed", 8 / 255, 0.9, 0.3, "e"), _cell("pgd", 8 / 255, 0.9, 0.1, "p1"),
             _cell("pgd", 8 / 255, 0.9, 0.0, "p5", **{"attack.restarts": 5})]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["EmbedAttack Accuracy"] == 0.3
    assert row["PGD [attack.restarts=1] Accuracy"] == 0.1 and row["PGD [attack.restarts=5] Accuracy"] == 0.0


def test_a_duplicate_run_keeps_the_oldest_and_is_listed(two_configs):
    newer = {**_cell("pgd", 8 / 255, 0.9, 0.99, "dup"), "start_time": 2}
    older = {**two_configs[1], "start_time": 1}
    frame = results_frame([newer, older])
    assert frame["adv"].tolist() == [0.10]
    assert frame.attrs["duplicates"] and frame.attrs["duplicates"][0].startswith("dup (same as a2")
    assert results_frame([two_configs[1], _cell("pgd", 8 / 255, 0.9, 0.99, "dup")])["adv"].tolist() == [0.10]


def test_curves_have_one_line_per_configuration(two_configs):
    points = curves(results_frame(two_configs))
    lines = {key: line.set_index("eps_255")["adv"].round(6).to_dict()
             for key, line in points.groupby(["configuration", "attack"])}
    pgd10 = "dinov2_vits14 [steps=10, encoder.image_size=224]"
    pgd20 = "dinov2_vits14 [steps=20, encoder.image_size=518]"
    assert lines == {(pgd10, "EmbedAttack"): {4.0: 0.5, 8.0: 0.3}, (pgd10, "PGD"): {4.0: 0.4, 8.0: 0.1},
                     (pgd20, "EmbedAttack"): {4.0: 0.45, 8.0: 0.2}, (pgd20, "PGD"): {4.0: 0.05, 8.0: 0.0}}


def test_reference_eps_defaults_to_8_over_255_and_rejects_an_unswept_value(rows):
    frame = results_frame(rows)
    assert reference_eps(frame) == pytest.approx(8 / 255)
    assert reference_eps(frame, 4 / 255) == pytest.approx(4 / 255)
    with pytest.raises(ValueError, match="not in the sweep"):
        reference_eps(frame, 2 / 255)


def test_fine_tuned_checkpoint_gets_its_own_encoder_label(rows):
    frame = results_frame(rows)
    assert "dino_vitb16 (deacl)" in set(frame["encoder_label"])
    other = encoder_label("dino_vitb16", "runs:/0123456789ab/checkpoints/epoch_10.pt")
    assert other == "dino_vitb16 (01234567/epoch_10)"


def test_a_deacl_student_is_named_by_method_gamma_and_epoch_not_by_its_run_id() -> None:
    student = "runs:/0123456789ab/checkpoints/epoch_002.safetensors"
    labels = fine_tune_labels(["0123456789ab"], [{"run_id": "0123456789ab", "gamma": "2.0", "dense_weight": "0.0"}])
    assert encoder_label("tiny_dinov2", student, labels) == "tiny_dinov2 · DeACL γ=2 · epoch 2"
    assert encoder_label("tiny_dinov2", student) == "tiny_dinov2 · DeACL run 01234567 · epoch 2"  # params unknown
    twins = fine_tune_labels(["aaaa1111", "bbbb2222"], [{"run_id": "aaaa1111", "gamma": "2"},
                                                         {"run_id": "bbbb2222", "gamma": "2", "dense_weight": "0.5"}])
    assert twins == {"aaaa1111": "DeACL γ=2", "bbbb2222": "DeACL γ=2, dense_weight=0.5"}


def test_failed_checks_lists_the_cell_and_the_check(rows):
    rows.append(_row("dinov2_vits14", "cifar10", "classification", "pgd", 16 / 255, 0.9, 0.0, passed=0.0))
    bad = failed_checks(results_frame(rows))
    assert len(bad) == 1 and "check/delta_in_ball" in bad.iloc[0]["failed"]


def test_failed_checks_name_the_configuration(two_configs):
    two_configs[5]["check/delta_in_ball"] = 0.0
    bad = failed_checks(results_frame(two_configs))
    assert bad[["configuration", "attack", "run_id"]].values.tolist() == [
        ["dinov2_vits14 [steps=20, encoder.image_size=518]", "PGD", "b2"]]


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


def test_summary_table_has_a_row_per_attack_setting_and_a_column_per_eps(two_configs):
    table = summary_table(two_configs, {"cell-a2", "cell-b2"})
    eps = [c for c in table.columns if c.endswith("/255")]
    assert len(table) == 2 and len(eps) == 1
    assert table[["steps", eps[0], "checks"]].values.tolist() == [["10", 0.1, "ok"], ["20", 0.0, "ok"]]


def test_summary_table_keeps_rows_of_other_settings_apart_and_names_the_setting(two_configs):
    same_steps = [{**row, "attack.steps": "10", "steps": "10"} for row in two_configs]
    table = summary_table(same_steps, {row["cell_id"] for row in same_steps})
    pgd = table[table["attack"] == "pgd"]
    assert len(pgd) == 2 and pgd["settings"].str.contains("encoder.image_size").all()
    assert sorted(pgd["8/255"]) == [0.0, 0.1] and sorted(pgd["4/255"]) == [0.05, 0.4]


def test_no_rows_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no finished cells"):
        write_report([], tmp_path)
