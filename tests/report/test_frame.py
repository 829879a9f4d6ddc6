"""Finished cell rows -> one frame (``ssl_robust.report.frame``): the oldest of duplicate runs kept and
listed, the reference eps, and the dry summary table of a sweep's cells."""
from __future__ import annotations

import pytest

from ssl_robust.report import reference_eps, results_frame, summary_table
from tests.report.fake import cell_row


def test_a_duplicate_run_keeps_the_oldest_and_is_listed(two_configs):
    newer = {**cell_row("pgd", 8 / 255, 0.9, 0.99, "dup"), "start_time": 2}
    older = {**two_configs[1], "start_time": 1}
    frame = results_frame([newer, older])
    assert frame["adv"].tolist() == [0.10]
    assert frame.attrs["duplicates"] and frame.attrs["duplicates"][0].startswith("dup (same as a2")
    assert results_frame([two_configs[1], cell_row("pgd", 8 / 255, 0.9, 0.99, "dup")])["adv"].tolist() == [0.10]


def test_reference_eps_defaults_to_8_over_255_and_rejects_an_unswept_value(rows):
    frame = results_frame(rows)
    assert reference_eps(frame) == pytest.approx(8 / 255)
    assert reference_eps(frame, 4 / 255) == pytest.approx(4 / 255)
    with pytest.raises(ValueError, match="not in the sweep"):
        reference_eps(frame, 2 / 255)


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
