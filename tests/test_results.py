"""A cell's result files: what a cell writes is what the report reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ssl_robust.results import (LOSS_CURVE, PER_IMAGE_IOU, PER_SAMPLE, CellArtifacts, iou_arrays, loss_curve_frame,
                                per_sample_frame)


def test_written_files_load_back_with_their_columns_and_values(tmp_path: Path) -> None:
    counts = {"inter": torch.tensor([[1, 0], [2, 3]]), "union": torch.tensor([[2, 1], [2, 4]])}
    written = CellArtifacts(per_sample_frame("pixel_acc", [4, 1], [0.5, 0.25], [0.125, 0.0], [1.5, 2.5]),
                            iou_arrays([4, 1], counts, counts),
                            loss_curve_frame(torch.tensor([3.0, 8.0], dtype=torch.float64), torch.tensor([2, 4])))
    written.write(tmp_path)
    loaded = CellArtifacts.load(tmp_path)
    assert list(loaded.per_sample.columns) == ["index", "clean_pixel_acc", "adv_pixel_acc", "attack_loss"]
    assert loaded.per_sample.to_dict("list") == written.per_sample.to_dict("list")
    assert set(loaded.iou) == {"index", "clean_inter", "clean_union", "adv_inter", "adv_union"}
    np.testing.assert_array_equal(loaded.iou["adv_union"], counts["union"].numpy())
    assert loaded.loss_curve.to_dict("list") == {"step": [1, 2], "mean_loss": [1.5, 2.0]}


def test_the_loss_curve_leaves_out_steps_no_sample_reached() -> None:
    frame = loss_curve_frame(torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64), torch.tensor([3, 0, 2]))
    assert frame.to_dict("list") == {"step": [1, 3], "mean_loss": [1.0, 2.0]}


def test_a_cell_without_steps_writes_an_empty_loss_curve_with_its_header(tmp_path: Path) -> None:
    CellArtifacts(loss_curve=loss_curve_frame(None, None)).write(tmp_path)
    assert (tmp_path / LOSS_CURVE).read_text().strip() == "step,mean_loss"


def test_a_task_without_per_image_counts_writes_no_iou_file(tmp_path: Path) -> None:
    CellArtifacts(per_sample_frame("correct", [0], [1.0], [0.0], [2.0]), iou_arrays([0], {}, {})).write(tmp_path)
    assert (tmp_path / PER_SAMPLE).is_file() and not (tmp_path / PER_IMAGE_IOU).exists()


def test_missing_files_load_as_none(tmp_path: Path) -> None:
    loaded = CellArtifacts.load(tmp_path)
    assert (loaded.per_sample, loaded.iou, loaded.loss_curve, loaded.examples) == (None, None, None, None)
