"""Uncertainty of every number: each comes from a finite test subset.

Accuracy: the Wilson score interval of k correct out of n. mIoU and RMSE: a percentile bootstrap
over images (``RESAMPLES`` resamples with replacement, seeded by ``SEED``: the same resample
weights for every cell of the same size), exact for mIoU because every resample sums the chosen
images' per-class intersections and unions. Both at ``LEVEL``; tables print ``value [lo, hi]``
(the intervals are not symmetric: an accuracy of 0 has [0.00, 0.11]) and the CSV files carry both
bounds.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ssl_robust.report.artifacts import CellArtifacts, Samples, samples
from ssl_robust.tasks import TASKS

LEVEL = 0.95
Z = 1.959963984540054  # two-sided normal quantile of LEVEL
RESAMPLES = 1000
SEED = 0
NAN2 = (float("nan"), float("nan"))


def method(task: str) -> str:
    return "Wilson" if TASKS.get(task).per_sample == "correct" else "bootstrap over images"


def wilson(k: float, n: float, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN for n = 0)."""
    if not n or n <= 0 or math.isnan(k) or math.isnan(n):
        return NAN2
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _weights(n: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n] counts of each image in each bootstrap resample."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return NAN2
    tail = 100 * (1 - LEVEL) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def bootstrap_miou(inter: np.ndarray, union: np.ndarray, resamples: int = RESAMPLES,
                   seed: int = SEED) -> tuple[float, float]:
    """Bootstrap interval of mIoU from per-image per-class intersections and unions [N, C]."""
    if len(inter) == 0:
        return NAN2
    w = _weights(len(inter), resamples, seed)
    i, u = w @ inter.astype(float), w @ union.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(u > 0, i / np.where(u > 0, u, 1), np.nan)
        present = np.isfinite(iou).sum(1)
        values = np.where(present > 0, np.nansum(iou, 1) / np.maximum(present, 1), np.nan)
    return _percentiles(values)


def bootstrap_mean(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-image values (NaN images skipped, as ``nanmean``)."""
    if len(values) == 0:
        return NAN2
    valid = np.isfinite(values)
    w = _weights(len(values), resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (w @ np.where(valid, values, 0.0)) / (w @ valid.astype(float))
    return _percentiles(means)


def of_samples(task: str, s: Samples | None) -> tuple[float, float]:
    """The interval of the task's metric over per-item ``s``."""
    if s is None or not len(s.index):
        return NAN2
    if TASKS.get(task).metric == "miou":
        return bootstrap_miou(s.inter, s.union)
    if TASKS.get(task).per_sample == "correct":
        return wilson(float(np.nansum(s.score)), float(np.isfinite(s.score).sum()))
    return bootstrap_mean(s.score)


def of_run(task: str, value: float, n: float | None, art: CellArtifacts | None, side: str) -> tuple[float, float]:
    """Interval of one cell's clean or attacked score: accuracy needs only the score and n."""
    if TASKS.get(task).per_sample == "correct" and n is not None and not math.isnan(n) and not math.isnan(value):
        return wilson(round(value * n), n)
    return of_samples(task, samples(art, task, side))


def run_intervals(frame: pd.DataFrame, artifacts: dict[str, CellArtifacts]) -> pd.DataFrame:
    """``clean_lo``, ``clean_hi``, ``adv_lo``, ``adv_hi`` of every cell of a results frame."""
    out = pd.DataFrame(index=frame.index, columns=["clean_lo", "clean_hi", "adv_lo", "adv_hi"], dtype=float)
    for i, row in frame.iterrows():
        art = artifacts.get(str(row.get("run_id", "")))
        n = row.get("n_samples")
        n = float(n) if n is not None and not (isinstance(n, float) and math.isnan(n)) else None
        for side in ("clean", "adv"):
            out.loc[i, [f"{side}_lo", f"{side}_hi"]] = of_run(row["task"], row[side], n, art, side)
    return out


def text(value: float, lo: float = float("nan"), hi: float = float("nan"), digits: int = 2) -> str:
    """``0.42 [0.39, 0.45]`` (the interval's bounds), ``0.42`` without an interval, ``""`` for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if math.isnan(lo) or math.isnan(hi):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
