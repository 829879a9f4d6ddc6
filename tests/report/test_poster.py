"""The poster comparison (``ssl_robust.report.poster``): the reference holds every row of the poster's
three tables, only runs in the poster's configuration sit beside its numbers, the rest are counted
out, and DeACL rows say which DeACL model they are."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ssl_robust.report import results_frame
from ssl_robust.report.intervals import run_intervals
from ssl_robust.report.poster import REFERENCE, compare, encoder_origin, load_reference, poster_recipe
from tests.report.fake import Cells

POSTER_RUN, OTHER_RUN = "5d0c4e2f9a8b7c6d5e4f", "0a1b2c3d4e5f6a7b8c9d"
POSTER = {"attack.steps": "20", "steps": "20", "attack.step_size": f"{2 / 255:.6g}"}
DEACL_RUNS = [{"run_id": POSTER_RUN, "encoder.name": "dino_vitb16", "data.name": "imagenet",
               "attack.eps": f"{4 / 255:.6g}", "gamma": "2.0", "epochs": "101"},
              {"run_id": OTHER_RUN, "encoder.name": "dino_vitb16", "data.name": "cifar10",
               "attack.eps": f"{8 / 255:.6g}", "gamma": "2.0", "epochs": "101"}]


def _cifar10(cells: Cells, encoder: str, size: int, checkpoint: str = "", **settings: str) -> None:
    for attack in ("embed", "pgd"):
        cells.add(encoder, "cifar10", "classification", attack, 8 / 255, 0.9, 0.2, n=20, checkpoint=checkpoint,
                  **{"encoder.image_size": str(size), **settings})


@pytest.fixture()
def tables(tmp_path: Path):
    cells = Cells(tmp_path)
    _cifar10(cells, "dinov2_vits14", 518, **POSTER)  # the poster's configuration
    _cifar10(cells, "dinov2_vits14", 224, **POSTER)  # another input size
    _cifar10(cells, "dinov2_vitb14", 518, **{**POSTER, "attack.steps": "10", "steps": "10"})  # other steps
    _cifar10(cells, "dino_vitb16", 224, checkpoint=f"runs:/{POSTER_RUN}/checkpoints/epoch_101.safetensors", **POSTER)
    _cifar10(cells, "dino_vitb16", 224, checkpoint=f"runs:/{POSTER_RUN}/checkpoints/epoch_050.safetensors", **POSTER)
    _cifar10(cells, "dino_vitb16", 224, checkpoint=f"runs:/{OTHER_RUN}/checkpoints/epoch_101.safetensors", **POSTER)
    _cifar10(cells, "dino_vitb16", 224, checkpoint="/ckpt/dinov1_vitb16_imagenet_lr0-05_eps4_nodecay-ep=100.ckpt",
             **POSTER)
    frame = results_frame(cells.rows)
    return compare(frame, load_reference(REFERENCE), run_intervals(frame, {}), DEACL_RUNS), cells


def test_the_poster_reference_holds_every_row_of_its_three_tables() -> None:
    reference = load_reference(REFERENCE)
    assert len(reference) == 28
    assert reference.groupby("task").size().to_dict() == {"classification": 12, "segmentation": 12, "depth": 4}
    assert set(reference["eps"]) == {"8/255"} and set(reference["encoder_type"]) == {"Standard", "DeACL"}
    assert set(reference["encoder"]) == {"dinov2_vits14", "dinov2_vitb14", "dino_vitb16"}
    assert reference[["clean", "embed", "task_attack"]].notna().all().all()
    deacl_stl10 = reference[(reference["dataset"] == "stl10") & (reference["encoder_type"] == "DeACL")].iloc[0]
    assert deacl_stl10[["clean", "embed", "task_attack"]].tolist() == [0.97, 0.83, 0.23]


def test_the_reference_names_the_posters_input_size_steps_and_step_size() -> None:
    reference = load_reference(REFERENCE)
    sizes = dict(reference[["encoder", "image_size"]].drop_duplicates().itertuples(index=False))
    assert sizes == {"dino_vitb16": 224, "dinov2_vits14": 518, "dinov2_vitb14": 518}
    assert set(reference["steps"]) == {20} and set(reference["step_size"]) == {"2/255"}


def test_only_runs_in_the_posters_configuration_are_compared(tables) -> None:
    compared, _ = tables
    table = compared["classification"].data
    assert set(table["Encoder"].str.split(" ").str[0]) == {"dinov2_vits14", "dino_vitb16"}
    standard = table[table["Poster encoder"] == "DINO v2 ViT-S/14 (Standard)"]
    assert len(standard) == 3 and set(standard["Origin"]) == {"hub weights"}  # clean, EmbedAttack, PGD: 518 px only
    assert "dinov2_vitb14" not in " ".join(table["Encoder"])  # 10 steps is not the poster's 20


def test_the_runs_left_out_are_counted_in_the_note(tables) -> None:
    compared, _ = tables
    note = compared["classification"].note
    # 224-px ViT-S/14, 10-step ViT-B/14, the epoch-50 student and the other recipe's student: 2 attacks each
    assert note.startswith("8 attack run(s) on the poster's encoders and data sets are left out")
    assert compared["classification"].data.attrs["left_out"] == 8


def test_deacl_rows_are_the_posters_recipe_at_its_last_epoch_or_the_released_checkpoint(tables) -> None:
    compared, _ = tables
    deacl = compared["classification"].data
    deacl = deacl[deacl["Poster encoder"] == "DINO v1 ViT-B/16 (DeACL)"]
    assert sorted(set(deacl["Origin"])) == [
        "DeACL run 5d0c4e2f epoch 101, the poster's recipe",
        "released checkpoint dinov1_vitb16_imagenet_lr0-05_eps4_nodecay-ep=100.ckpt"]
    assert len(deacl) == 2 * 3


def test_a_deacl_student_of_another_recipe_or_epoch_matches_no_poster_row() -> None:
    runs = {r["run_id"]: r for r in DEACL_RUNS}
    assert encoder_origin(f"runs:/{OTHER_RUN}/checkpoints/epoch_101.safetensors", runs) is None
    assert encoder_origin(f"runs:/{POSTER_RUN}/checkpoints/epoch_050.safetensors", runs) is None
    assert encoder_origin(f"runs:/{POSTER_RUN}/checkpoints/epoch_101.safetensors", {}) is None  # params unknown
    assert encoder_origin("/ckpt/other.pt") is None and encoder_origin("") == ("Standard", "hub weights")
    assert poster_recipe(runs[POSTER_RUN]) and not poster_recipe(runs[OTHER_RUN])


def test_a_report_without_runs_in_the_posters_configuration_says_so(tmp_path: Path) -> None:
    cells = Cells(tmp_path)
    _cifar10(cells, "dinov2_vits14", 224)
    frame = results_frame(cells.rows)
    table = compare(frame, load_reference(REFERENCE), run_intervals(frame, {}))["classification"]
    assert table.data.empty
    assert table.note.startswith("No run of this report is in the poster's configuration (dinov2_vits14 at 518 px")
    assert "20 steps of 2/255" in table.note
    assert "2 attack run(s)" in table.note
    assert isinstance(table.data, pd.DataFrame)
