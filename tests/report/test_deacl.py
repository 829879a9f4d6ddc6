"""The poster's DeACL figure (``ssl_robust.report.deacl``): each fine-tune's points run from its
teacher at epoch 0 through its students' epochs."""
from __future__ import annotations

import pytest

from ssl_robust.report import results_frame
from ssl_robust.report.deacl import deacl_points
from ssl_robust.report.intervals import run_intervals
from tests.report.fake import RUN_B, deacl_cells, deacl_runs


@pytest.fixture(scope="module")
def fine_tunes(tmp_path_factory: pytest.TempPathFactory):
    """``deacl_cells`` (the fake sweep plus the students of two DeACL runs) and those runs' params."""
    return deacl_cells(tmp_path_factory.mktemp("outputs") / "runs"), deacl_runs()


def test_deacl_points_run_from_the_teacher_at_epoch_0(fine_tunes) -> None:
    cells, runs = fine_tunes
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
