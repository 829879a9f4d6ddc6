"""The report's tables (``ssl_robust.report.tables``): the poster's layout per task with clean and each
attack at the reference eps, never merging runs of different configurations, and the
robustness-vs-eps curves, one line per configuration."""
from __future__ import annotations

import pytest

from ssl_robust.report import curves, poster_table, reference_eps, results_frame
from tests.report.fake import cell_row


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
    cells = [cell_row("embed", 8 / 255, 0.9, 0.3, "e", device="cuda:1", **{"data.root": "/mnt/other"}),
             cell_row("pgd", 8 / 255, 0.9, 0.1, "p", device="cpu")]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert table.to_dict("records") == [{"Dataset": "cifar10", "Encoder": "dinov2_vits14", "Clean Accuracy": 0.9,
                                         "EmbedAttack Accuracy": 0.3, "PGD Accuracy": 0.1}]


@pytest.mark.parametrize("field, value", [("data.n_samples", "256"), ("encoder.layer", "9"), ("seed", "1"),
                                          ("head.epochs", "20"), ("batch_size", "64")])
def test_any_other_config_field_splits_rows(field, value):
    cells = [cell_row("pgd", 8 / 255, 0.9, 0.1, "x"), cell_row("pgd", 8 / 255, 0.9, 0.2, "y", **{field: value})]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert sorted(table["PGD Accuracy"]) == [0.1, 0.2]
    assert all(f"{field}=" in label for label in table["Encoder"])


def test_checkpoints_with_one_file_stem_are_told_apart_by_their_path():
    cells = [cell_row("pgd", 8 / 255, 0.9, 0.1, "x", **{"encoder.checkpoint": "/ckpt/a/deacl.pt"}),
             cell_row("pgd", 8 / 255, 0.9, 0.2, "y", **{"encoder.checkpoint": "/ckpt/b/deacl.pt"})]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert table["Encoder"].tolist() == ["dinov2_vits14 (deacl) [encoder.checkpoint=/ckpt/a/deacl.pt]",
                                         "dinov2_vits14 (deacl) [encoder.checkpoint=/ckpt/b/deacl.pt]"]


def test_different_per_attack_settings_get_their_own_column_not_an_average():
    cells = [cell_row("embed", 8 / 255, 0.9, 0.3, "e"), cell_row("pgd", 8 / 255, 0.9, 0.1, "p1"),
             cell_row("pgd", 8 / 255, 0.9, 0.0, "p5", **{"attack.restarts": 5})]
    table = poster_table(results_frame(cells), "classification", 8 / 255)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["EmbedAttack Accuracy"] == 0.3
    assert row["PGD [attack.restarts=1] Accuracy"] == 0.1 and row["PGD [attack.restarts=5] Accuracy"] == 0.0


def test_curves_have_one_line_per_configuration(two_configs):
    points = curves(results_frame(two_configs))
    lines = {key: line.set_index("eps_255")["adv"].round(6).to_dict()
             for key, line in points.groupby(["configuration", "attack"])}
    pgd10 = "dinov2_vits14 [steps=10, encoder.image_size=224]"
    pgd20 = "dinov2_vits14 [steps=20, encoder.image_size=518]"
    assert lines == {(pgd10, "EmbedAttack"): {4.0: 0.5, 8.0: 0.3}, (pgd10, "PGD"): {4.0: 0.4, 8.0: 0.1},
                     (pgd20, "EmbedAttack"): {4.0: 0.45, 8.0: 0.2}, (pgd20, "PGD"): {4.0: 0.05, 8.0: 0.0}}
