"""Worst case over attacks, per test item (as AutoAttack and RobustBench report robustness).

For each configuration and eps, over every attack run at that eps (each set of per-attack settings
counts as an attack), one attack's result is kept per test item (``ssl_robust.worst``).
Classification and depth keep each item's worst score and report their mean (an item is robust only
if every attack failed on it; an image's RMSE is its highest), with ties to the first attack in label
order and NaN only where every attack has it. Segmentation reports mIoU from the kept images' summed
per-class intersections and unions, which is not monotone in per-image mIoU, so the images are chosen
by a local search on that aggregate: starting from the attack with the lowest own mIoU, an image
switches to another attack's result only where that strictly lowers the aggregate mIoU (up to 10
passes over the images); the per-image choice (each image's lowest per-image mIoU) is searched from as
well, and the lower result is kept. The worst case is therefore never above any attack's own mIoU.
Needs the per-sample artifacts of every attack of the group.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ssl_robust.report import intervals
from ssl_robust.report.artifacts import CellArtifacts, Samples, aggregate, samples
from ssl_robust.report.frame import ROW
from ssl_robust.tasks import TASKS
from ssl_robust.worst import worst_mean_pick, worst_miou_pick

COLUMNS = ["task", "dataset", "encoder_label", "config", "config_label", "eps", "eps_255", "clean", "worst",
           "worst_lo", "worst_hi", "n", "attacks", "runs", "note"]


def choose(task: str, adv: list[Samples]) -> Samples:
    """Per item, the worst of the aligned ``adv`` samples (same index order in each)."""
    scores = np.stack([s.score for s in adv])  # [A, N]
    cols = np.arange(scores.shape[1])
    if TASKS.get(task).metric == "miou" and adv[0].inter is not None:
        inter, union = np.stack([s.inter for s in adv]), np.stack([s.union for s in adv])
        pick = worst_miou_pick(inter, union)
        return Samples(adv[0].index, scores[pick, cols], inter[pick, cols], union[pick, cols])
    pick = worst_mean_pick(scores, TASKS.get(task).higher_is_better)
    return Samples(adv[0].index, scores[pick, cols])


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
