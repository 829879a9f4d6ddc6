"""The files a cell writes next to its metrics, written and read here only.

``per_sample.csv``: ``index``, ``clean_<col>``, ``adv_<col>``, ``attack_loss`` (``<col>`` =
``correct``, ``pixel_acc`` or ``rmse``). ``per_image_iou.npz`` (segmentation): ``index`` [N];
``clean_inter``, ``clean_union``, ``adv_inter``, ``adv_union`` [N, C]. ``loss_curve.csv``: ``step``,
``mean_loss`` (the steps some sample reached). ``adv_examples.png``: the example figure. ``index``
names the test item in the cell's deterministic subset, so rows align across the attacks of one
data config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

PER_SAMPLE, PER_IMAGE_IOU, LOSS_CURVE = "per_sample.csv", "per_image_iou.npz", "loss_curve.csv"
EXAMPLES = "adv_examples.png"


def per_sample_frame(column: str, index: Sequence[int], clean: Sequence[float], adv: Sequence[float],
                     loss: Sequence[float]) -> pd.DataFrame:
    """The per-sample table of a cell whose per-sample score is ``column``."""
    return pd.DataFrame({"index": list(index), f"clean_{column}": list(clean), f"adv_{column}": list(adv),
                         "attack_loss": list(loss)})


def loss_curve_frame(step_loss: torch.Tensor | None, step_count: torch.Tensor | None) -> pd.DataFrame:
    """Mean attack loss per gradient step, over the steps some sample reached."""
    if step_loss is None or step_count is None:
        return pd.DataFrame({"step": pd.Series(dtype=int), "mean_loss": pd.Series(dtype=float)})
    mean, count = (step_loss / step_count.clamp_min(1)).tolist(), step_count.tolist()
    rows = [(step, loss) for step, (loss, n) in enumerate(zip(mean, count), 1) if n]
    return pd.DataFrame(rows, columns=["step", "mean_loss"])


@dataclass
class CellArtifacts:
    """A cell's result files, in memory; absent ones are None."""

    per_sample: pd.DataFrame | None = None
    iou: dict[str, np.ndarray] | None = None
    loss_curve: pd.DataFrame | None = None
    examples: Path | None = None  # the cell's example figure

    def write(self, folder: Path) -> None:
        """Write the tables (the example figure is saved where it is drawn, ``folder / EXAMPLES``)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.per_sample is not None:
            self.per_sample.to_csv(folder / PER_SAMPLE, index=False)
        if self.iou is not None:
            np.savez(folder / PER_IMAGE_IOU, **self.iou)
        if self.loss_curve is not None:
            self.loss_curve.to_csv(folder / LOSS_CURVE, index=False)

    @classmethod
    def load(cls, folder: Path | str | None = None, per_sample: Path | str | None = None,
             iou: Path | str | None = None, loss_curve: Path | str | None = None) -> "CellArtifacts":
        """From a ``results`` folder and/or single files; absent files stay None."""
        if folder is not None:
            folder = Path(folder)
            per_sample = per_sample or folder / PER_SAMPLE
            iou = iou or folder / PER_IMAGE_IOU
            loss_curve = loss_curve or folder / LOSS_CURVE
        exists = lambda p: p is not None and Path(p).is_file()  # noqa: E731
        arrays = None
        if exists(iou):
            with np.load(iou) as data:
                arrays = {k: data[k] for k in data.files}
        examples = Path(folder) / EXAMPLES if folder is not None and exists(Path(folder) / EXAMPLES) else None
        return cls(pd.read_csv(per_sample) if exists(per_sample) else None, arrays,
                   pd.read_csv(loss_curve) if exists(loss_curve) else None, examples)


def iou_arrays(index: Sequence[int], clean: dict[str, torch.Tensor],
               adv: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """The per-image IoU file's arrays from the clean and attacked per-image counts (None for a
    task without them)."""
    if not clean:
        return None
    return {"index": np.array(list(index)), "clean_inter": clean["inter"].numpy(),
            "clean_union": clean["union"].numpy(), "adv_inter": adv["inter"].numpy(),
            "adv_union": adv["union"].numpy()}
