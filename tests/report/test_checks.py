"""Checks across cells (``ssl_robust.report.checks``): a cell made non-monotone on purpose, a gradient
attack weaker than noise, a loss curve still rising and a clean score that disagrees are flagged (in
red on the page), others are not; the failed-checks list names each cell, its check and configuration."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ssl_robust.report import CellArtifacts, failed_checks, results_frame, write_report
from ssl_robust.report.checks import cross_checks, failures, loss_levelled
from tests.report.fake import result_row, sweep

SPECIAL = {("dinov2_vits14", "classification", "pgd", 8): {"adv_q": 0.95},  # better than at 4/255 and noise
           ("dino_vitb16", "depth", "depthpgd", 4): {"adv_q": 0.45},  # RMSE below noise's and the clean one
           ("dino_vitb16", "depth", "embed", 4): {"adv_q": 0.45},  # the same, but EmbedAttack does not aim at RMSE
           ("dino_vitb16", "depth", "depthpgd", 8): {"loss": [0.1 * s for s in range(1, 11)]},
           ("dino_vitb16", "segmentation", "segpgd", 8): {"loss": [0.1 * s for s in range(1, 11)]}}  # by design


@pytest.fixture(scope="module")
def flagged(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("checks")
    cells = sweep(root / "runs", n=40, special=SPECIAL)
    frame = results_frame(cells.rows)
    arts = {k: CellArtifacts.load(v) for k, v in cells.artifacts.items()}
    write_report(cells.rows, root / "report", artifacts=cells.artifacts)
    return frame, cross_checks(frame, arts), root / "report"


def _failed(frame: pd.DataFrame, cross: pd.DataFrame) -> dict[tuple, list[str]]:
    return {(frame.at[i, "encoder"], frame.at[i, "task"], frame.at[i, "attack"], round(frame.at[i, "eps"] * 255)):
            sorted(c.split(" ")[0] for c in checks) for i, checks in failures(frame, cross).items()}


@pytest.mark.slow  # ``flagged`` renders a whole report
def test_exactly_the_broken_cells_are_flagged(flagged: tuple[pd.DataFrame, pd.DataFrame, Path]) -> None:
    frame, cross, _ = flagged
    assert _failed(frame, cross) == {
        ("dinov2_vits14", "classification", "pgd", 8): ["cross/beats_noise", "cross/eps_monotone"],
        ("dino_vitb16", "depth", "depthpgd", 4): ["cross/beats_noise", "cross/eps_monotone"],
        ("dino_vitb16", "depth", "depthpgd", 8): ["cross/loss_levelled"]}  # SegPGD's rising loss is not a failure
    evaluated = cross.groupby("check").size().to_dict()
    assert evaluated["cross/eps_monotone"] == 2 * 3 * 2  # each task attack line at its two eps > 0
    assert evaluated["cross/beats_noise"] == 2 * 3 * 2  # the task attack at two eps > 0
    assert evaluated["cross/loss_levelled"] == 2 * 3 * 2 * 2 - 2 * 2  # every gradient attack cell at eps > 0 but SegPGD's


@pytest.mark.slow  # ``flagged`` renders a whole report
def test_flagged_cells_are_red_in_the_page_and_marked_in_the_files(flagged) -> None:
    _, _, out = flagged
    table = pd.read_csv(out / "table_classification.csv", keep_default_na=False).set_index("Encoder")
    assert table.at["dinov2_vits14", "PGD Accuracy failed"].startswith("cross/eps_monotone")
    assert table.at["dino_vitb16", "PGD Accuracy failed"] == ""
    page = (out / "index.html").read_text()
    assert page.count('class="num fail"') == 2  # red in the tables: the two broken cells at 8/255...
    assert page.count('<td class="fail"') == 3  # ...and every broken cell in red under Checks
    assert "3 of 54 cells failed a check." in page
    assert "✗" in (out / "table_classification.md").read_text()
    listed = pd.read_csv(out / "checks.csv")
    assert len(listed) == 3 and listed["Failed checks"].str.contains("cross/").all()


def test_a_failed_per_cell_check_is_flagged_too(tmp_path: Path) -> None:
    cells = sweep(tmp_path / "runs", n=10)
    cells.rows[4]["check/delta_in_ball"] = 0.0
    cells.rows[4]["check/all_passed"] = 0.0
    frame = results_frame(cells.rows)
    no_cross = cross_checks(frame, {}).iloc[:0]
    assert failures(frame, no_cross) == {4: ["check/delta_in_ball"]}
    assert "check/delta_in_ball" in failures(frame, cross_checks(frame, {}))[4]


@pytest.mark.parametrize("curve, levelled", [
    ([1.0, 1.6, 1.9, 1.98, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0], True),  # saturated
    ([0.1 * s for s in range(1, 11)], False),  # still rising
    ([2.0, 1.0, 1.5, 1.2, 1.1], True),  # falling at the end (easy items left the batch)
    ([1.0] * 6, True),  # flat
    ([1.0, 2.0], None),  # too short to tell
    ([float("nan")] * 5, None),
])
def test_loss_levelled_rule(curve: list[float], levelled: bool | None) -> None:
    ok, detail = loss_levelled(pd.DataFrame({"step": range(1, len(curve) + 1), "mean_loss": curve}))
    assert ok is levelled
    assert (ok is False) == detail.startswith("loss still rising")


def test_a_curve_that_stops_early_ran_out_of_items_and_passes() -> None:
    rising = pd.DataFrame({"step": [1, 2, 3], "mean_loss": [0.1, 0.5, 1.0]})
    assert loss_levelled(rising, steps=10) == (True, "every item fooled by step 3 of 10")
    assert loss_levelled(rising, steps=3)[0] is False


def test_a_short_attack_that_has_not_levelled_off_says_so(tmp_path: Path) -> None:
    rising = pd.DataFrame({"step": [1, 2, 3], "mean_loss": [0.1, 0.5, 0.9]})
    ok, detail = loss_levelled(rising)
    assert ok is False and detail.endswith("; a 3-step attack is too short to converge")
    long_rising = pd.DataFrame({"step": range(1, 11), "mean_loss": [0.1 * s for s in range(1, 11)]})
    assert "too short" not in loss_levelled(long_rising)[1]


@pytest.mark.slow  # renders two reports
def test_a_page_whose_only_loss_failures_are_short_attacks_explains_them(tmp_path: Path) -> None:
    three_steps = {(enc, task, attack, eps): {"loss": [0.1, 0.5, 0.9], "attack.steps": "3"}
                   for enc in ("dinov2_vits14", "dino_vitb16")
                   for task, attack in (("classification", "pgd"), ("depth", "depthpgd")) for eps in (4, 8)}
    cells = sweep(tmp_path / "runs", n=10, special=three_steps)
    page = write_report(cells.rows, tmp_path / "report", artifacts=cells.artifacts).read_text()
    assert "Every failure of cross/loss_levelled is an attack of fewer than 10 steps" in page
    plain = sweep(tmp_path / "plain", n=10, special={("dino_vitb16", "depth", "depthpgd", 8): SPECIAL[
        ("dino_vitb16", "depth", "depthpgd", 8)]})
    assert "Every failure of cross/loss_levelled" not in write_report(
        plain.rows, tmp_path / "report2", artifacts=plain.artifacts).read_text()


# ----------------------------------------------------------------------------- the failed-checks list


def test_failed_checks_lists_the_cell_and_the_check(rows):
    rows.append(result_row("dinov2_vits14", "cifar10", "classification", "pgd", 16 / 255, 0.9, 0.0, passed=0.0))
    bad = failed_checks(results_frame(rows))
    assert len(bad) == 1 and "check/delta_in_ball" in bad.iloc[0]["failed"]


def test_failed_checks_name_the_configuration(two_configs):
    two_configs[5]["check/delta_in_ball"] = 0.0
    bad = failed_checks(results_frame(two_configs))
    assert bad[["configuration", "attack", "run_id"]].values.tolist() == [
        ["dinov2_vits14 [steps=20, encoder.image_size=518]", "PGD", "b2"]]
