"""Worst case over attacks, per test item (as AutoAttack and RobustBench report robustness).

For each configuration and eps, over every attack run at that eps (each set of per-attack settings
counts as an attack): classification counts an item as robust only if every attack failed on it;
segmentation and depth take each image's worst attack by its per-image score (per-image mIoU, the
lowest; RMSE, the highest; ties go to the first attack in label order) and compute the metric
from the chosen images: mIoU from their summed per-class intersections and unions, RMSE as the
mean of their per-image RMSEs. Needs the per-sample artifacts of every attack of the group.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ssl_robust.report import intervals
from ssl_robust.report.artifacts import CellArtifacts, Samples, aggregate, samples
from ssl_robust.report.frame import ROW
from ssl_robust.tasks import TASKS

COLUMNS = ["task", "dataset", "encoder_label", "config", "config_label", "eps", "eps_255", "clean", "worst",
           "worst_lo", "worst_hi", "n", "attacks", "runs", "note"]


def choose(task: str, adv: list[Samples]) -> Samples:
    """Per item, the worst of the aligned ``adv`` samples (same index order in each)."""
    if TASKS.get(task).per_sample == "correct":
        score = np.min(np.stack([s.score for s in adv]), axis=0)
        return Samples(adv[0].index, score)
    scores = np.stack([s.score for s in adv])  # [A, N]
    higher = TASKS.get(task).higher_is_better
    # NaN (an image without valid pixels) is never chosen unless every attack has it
    filled = np.where(np.isnan(scores), np.inf if higher else -np.inf, scores)
    pick = np.argmin(filled, axis=0) if higher else np.argmax(filled, axis=0)
    cols = np.arange(scores.shape[1])
    chosen = Samples(adv[0].index, scores[pick, cols])
    if adv[0].inter is not None:
        chosen.inter = np.stack([s.inter for s in adv])[pick, cols]
        chosen.union = np.stack([s.union for s in adv])[pick, cols]
    return chosen


def _align(found: list[Samples]) -> list[Samples] | None:
    """The samples restricted to one index order; None if the index sets differ."""
    first = found[0].index
    if any(len(s.index) != len(first) or not np.array_equal(s.index, first) for s in found[1:]):
        return None
    return found


def group_worst(task: str, runs: pd.DataFrame, artifacts: dict[str, CellArtifacts]) -> dict:
    """Worst case of one (configuration, eps) group of attack runs."""
    labels = runs["attack_label"].tolist()
    order = np.argsort(labels, kind="stable")
    runs = runs.iloc[order]
    ids = [str(r) for r in runs.get("run_id", pd.Series([""] * len(runs), index=runs.index))]
    out = {"clean": float(runs["clean"].iloc[0]), "attacks": ", ".join(runs["attack_label"]),
           "runs": " ".join(i for i in ids if i), "worst": np.nan, "worst_lo": np.nan, "worst_hi": np.nan,
           "n": np.nan, "note": ""}
    found = [samples(artifacts.get(i), task, "adv") for i in ids]
    missing = [label for label, s in zip(runs["attack_label"], found) if s is None]
    if missing:
        out["note"] = "no per-sample results for " + ", ".join(missing)
        return out
    aligned = _align(found)
    if aligned is None:
        out["note"] = "the attacks' test items differ"
        return out
    chosen = choose(task, aligned)
    lo, hi = intervals.of_samples(task, chosen)
    out.update(worst=aggregate(task, chosen), worst_lo=lo, worst_hi=hi, n=float(len(chosen.index)))
    return out


def worst_case(frame: pd.DataFrame, artifacts: dict[str, CellArtifacts]) -> pd.DataFrame:
    """One row per (task, data set, configuration, eps): the worst case over its attacks."""
    rows = []
    for key, runs in frame.groupby(ROW + ["eps"], sort=True):
        row = dict(zip(ROW + ["eps"], key))
        row.update(config_label=runs["config_label"].iloc[0], eps_255=row["eps"] * 255)
        row.update(group_worst(row["task"], runs, artifacts))
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
