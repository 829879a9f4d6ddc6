"""A cell's per-sample results as the report reads them: per test item, the score that picks the
worst attack, and the primary metric of any set of items. The files and their columns are
``ssl_robust.results``'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import torch

from ssl_robust.metrics import miou_of_counts
from ssl_robust.results import CellArtifacts
from ssl_robust.tasks import TASKS

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
    """Each image's mIoU from its per-class counts (``metrics.miou_of_counts``)."""
    return miou_of_counts(torch.as_tensor(inter), torch.as_tensor(union)).numpy()


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
