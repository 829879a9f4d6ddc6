"""A cell's per-sample artifacts, loaded from local files (no tracking server here).

Every attack cell logs ``results/per_sample.csv`` (``index``, ``clean_<col>``, ``adv_<col>``,
``attack_loss``; ``<col>`` = ``correct``, ``pixel_acc`` or ``rmse``), for segmentation
``results/per_image_iou.npz`` (``index`` [N]; ``clean_inter``, ``clean_union``, ``adv_inter``,
``adv_union`` [N, C]) and ``results/loss_curve.csv`` (``step``, ``mean_loss``). ``index`` names the
test item in the cell's deterministic subset, so rows align across the attacks of one data config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import pandas as pd

from ssl_robust.tasks import TASKS

PER_SAMPLE, PER_IMAGE_IOU, LOSS_CURVE = "per_sample.csv", "per_image_iou.npz", "loss_curve.csv"
EXAMPLES = "adv_examples.png"


@dataclass
class CellArtifacts:
    per_sample: pd.DataFrame | None = None
    iou: dict[str, np.ndarray] | None = None
    loss_curve: pd.DataFrame | None = None
    examples: Path | None = None  # the cell's example figure (``adv_examples.png``)

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


Source = Mapping[str, Union[CellArtifacts, Path, str]]


def as_artifacts(source: Source | None) -> dict[str, CellArtifacts]:
    """``{run_id: CellArtifacts}`` from artifacts or ``results`` folders, keyed by run id."""
    return {str(k): v if isinstance(v, CellArtifacts) else CellArtifacts.load(v) for k, v in (source or {}).items()}


@dataclass
class Samples:
    """One side (clean or adv) of a cell, per test item: the per-image score that picks the worst
    attack (``correct``, per-image mIoU or RMSE) and, for segmentation, intersections/unions."""

    index: np.ndarray  # [N]
    score: np.ndarray  # [N]
    inter: np.ndarray | None = None  # [N, C]
    union: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> "Samples":
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Samples(self.index[rows], self.score[rows], pick(self.inter), pick(self.union))


def per_image_miou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU of each image over the classes present in its labels or prediction; 1 where none is."""
    present = union > 0
    iou = np.where(present, inter / np.maximum(union, 1), 0.0)
    count = present.sum(1)
    return np.where(count > 0, iou.sum(1) / np.maximum(count, 1), 1.0)


def miou(inter: np.ndarray, union: np.ndarray) -> float:
    """mIoU of a set of images from their summed per-class intersections and unions."""
    inter, union = inter.sum(0).astype(float), union.sum(0).astype(float)
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


def aggregate(task: str, samples: Samples) -> float:
    """The task's primary metric over ``samples`` (as the cell computes it)."""
    if TASKS.get(task).metric == "miou":
        return miou(samples.inter, samples.union)
    return float(np.nanmean(samples.score)) if np.isfinite(samples.score).any() else float("nan")


def samples(art: CellArtifacts | None, task: str, side: str) -> Samples | None:
    """``side`` ("clean" or "adv") of a cell per test item, sorted by index; None if not logged."""
    if art is None:
        return None
    spec = TASKS.get(task)
    if spec.metric == "miou":
        if art.iou is None or f"{side}_inter" not in art.iou:
            return None
        index = np.asarray(art.iou["index"], dtype=np.int64)
        inter = np.asarray(art.iou[f"{side}_inter"], dtype=np.int64)
        union = np.asarray(art.iou[f"{side}_union"], dtype=np.int64)
        order = np.argsort(index, kind="stable")
        return Samples(index, per_image_miou(inter, union), inter, union).take(order)
    column = f"{side}_{spec.per_sample}"
    if art.per_sample is None or column not in art.per_sample:
        return None
    frame = art.per_sample.sort_values("index", kind="stable")
    return Samples(frame["index"].to_numpy(np.int64), frame[column].to_numpy(float))
