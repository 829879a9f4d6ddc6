"""Checks across cells, beside the per-cell ``check/*`` metrics; failing cells are flagged, never hidden.

- ``cross/eps_monotone``: per (task, data set, configuration, task attack and its settings) the
  attacked score never improves as eps grows. A cell fails if its score is better than the score of
  the same attack at any smaller eps (no tolerance: the cells share their test items). Only attacks
  that search for a worse task score are checked (``frame.aims_at_task``): uniform noise is random by
  design, and EmbedAttack pushes the embedding, so either may move a score by a few items either way.
- ``cross/beats_noise``: at eps > 0 every task attack is at least as harmful as the uniform-noise
  baseline of the same configuration and eps (its attacked score no better than noise's).
- ``cross/loss_levelled``: the attack loss has levelled off. Over the last ``max(1, ceil(S/5))`` of the
  curve's S gradient steps the mean loss rose by at most ``LEVEL_TOLERANCE`` (10 %) of the curve's range
  (max - min over all steps). A curve that stops before the attack's last step passes (no item was
  left to attack: all fooled). Not checked for curves of fewer than ``MIN_STEPS`` (3) steps, for
  uniform noise (no steps), for objectives that reweigh their terms by step (SegPGD: its loss rises
  by design) nor at eps = 0. A failure of an attack of fewer than ``SHORT_ATTACK`` steps says that it
  is too short to converge.
- ``cross/clean_consistent``: the attack runs of one configuration report the same clean score.
"""
from __future__ import annotations

import math

import pandas as pd

from ssl_robust.attacks import ATTACKS
from ssl_robust.objectives import STEP_DEPENDENT
from ssl_robust.report.artifacts import CellArtifacts
from ssl_robust.report.frame import ROW, aims_at_task, gradient_free
from ssl_robust.tasks import TASKS

LEVEL_TOLERANCE = 0.10
MIN_STEPS = 3
SHORT_ATTACK = 10  # fewer steps than this: an attack too short to converge
CLEAN_TOLERANCE = 1e-6
RULES = {
    "cross/eps_monotone": "the attacked score never improves as ε grows (same configuration and task attack; "
                          "not noise or EmbedAttack, which do not aim at the task score)",
    "cross/beats_noise": "each task attack is at least as harmful as uniform noise of the same ε",
    "cross/loss_levelled": f"over the last fifth of the gradient steps the mean attack loss rose by at most "
                           f"{LEVEL_TOLERANCE:.0%} of its range (curves of ≥ {MIN_STEPS} steps, ε > 0; not SegPGD, "
                           f"whose objective changes with the step)",
    "cross/clean_consistent": "every attack run of a configuration reports the same clean score",
}
COLUMNS = ["cell", "check", "passed", "detail"]


def _better(task: str, a: float, b: float) -> bool:
    """``a`` is a strictly better score than ``b`` for the task."""
    return a > b + 1e-12 if TASKS.get(task).higher_is_better else a < b - 1e-12


def eps_monotone(frame: pd.DataFrame) -> list[dict]:
    out = []
    for _, line in frame[frame["attack"].map(aims_at_task)].groupby(ROW + ["attack", "attack_config"], sort=False):
        line = line.dropna(subset=["adv"]).sort_values("eps")
        task = line["task"].iloc[0] if len(line) else None
        worst_so_far = None  # (score, eps) of the most harmed smaller eps
        for i, row in line.iterrows():
            if worst_so_far is not None:
                bad = _better(task, row["adv"], worst_so_far[0])
                out.append({"cell": i, "check": "cross/eps_monotone", "passed": not bad,
                            "detail": f"{row['adv']:.4g} at ε = {row['eps'] * 255:.3g}/255 is better than "
                                      f"{worst_so_far[0]:.4g} at ε = {worst_so_far[1] * 255:.3g}/255" if bad else ""})
            if worst_so_far is None or _better(task, worst_so_far[0], row["adv"]):
                worst_so_far = (row["adv"], row["eps"])
    return out


def beats_noise(frame: pd.DataFrame) -> list[dict]:
    out = []
    noisy = frame["attack"].map(gradient_free)
    for _, group in frame[frame["eps"] > 0].groupby(ROW + ["eps"], sort=False):
        noise = group[noisy[group.index]].dropna(subset=["adv"])
        if noise.empty:
            continue
        task = group["task"].iloc[0]
        # the weakest noise run (its settings may differ) is the baseline every attack must match
        baseline = noise["adv"].max() if TASKS.get(task).higher_is_better else noise["adv"].min()
        for i, row in group[group["attack"].map(aims_at_task)].dropna(subset=["adv"]).iterrows():
            bad = _better(task, row["adv"], baseline)
            out.append({"cell": i, "check": "cross/beats_noise", "passed": not bad,
                        "detail": f"{row['adv']:.4g} under {row['attack_label']} is better than "
                                  f"{baseline:.4g} under uniform noise" if bad else ""})
    return out


def loss_levelled(curve: pd.DataFrame | None, steps: int | None = None) -> tuple[bool | None, str]:
    """(levelled, detail) of a loss curve (``step``, ``mean_loss``) of an attack of ``steps`` steps;
    None if not checkable. A curve that ends before ``steps`` ran out of items to attack (each one
    fooled): the attack is done, so it passes."""
    if curve is None or "mean_loss" not in curve:
        return None, "no loss curve"
    curve = curve.sort_values("step")
    if steps and len(curve) and curve["step"].max() < steps:
        return True, f"every item fooled by step {int(curve['step'].max())} of {steps}"
    loss = curve["mean_loss"].astype(float)
    loss = loss[loss.map(math.isfinite)].to_numpy()
    if len(loss) < MIN_STEPS:
        return None, f"{len(loss)} steps"
    window = max(1, math.ceil(len(loss) / 5))
    late, spread = loss[-1] - loss[-1 - window], loss.max() - loss.min()
    if spread <= 1e-12 or late <= LEVEL_TOLERANCE * spread:
        return True, ""
    short = f"; a {len(loss)}-step attack is too short to converge" if len(loss) < SHORT_ATTACK else ""
    return False, (f"loss still rising: +{late:.4g} over the last {window} of {len(loss)} steps "
                   f"({late / spread:.0%} of its range){short}")


def _step_dependent(attack: str) -> bool:
    return attack in ATTACKS and ATTACKS.get(attack).objective in STEP_DEPENDENT


def short_attacks_only(cross: pd.DataFrame) -> bool:
    """Every failure of ``cross/loss_levelled`` is an attack too short to converge."""
    failed = cross[(cross["check"] == "cross/loss_levelled") & ~cross["passed"].astype(bool)]
    return bool(len(failed)) and failed["detail"].str.contains("too short to converge").all()


def levelled(frame: pd.DataFrame, artifacts: dict[str, CellArtifacts]) -> list[dict]:
    out = []
    for i, row in frame.iterrows():
        if gradient_free(row["attack"]) or row["eps"] <= 0 or _step_dependent(row["attack"]):  # eps 0: nothing moves
            continue
        art = artifacts.get(str(row.get("run_id", "")))
        steps = pd.to_numeric(row.get("attack.steps"), errors="coerce")
        ok, detail = loss_levelled(art.loss_curve if art is not None else None,
                                   int(steps) if pd.notna(steps) else None)
        if ok is not None:
            out.append({"cell": i, "check": "cross/loss_levelled", "passed": ok, "detail": detail})
    return out


def clean_consistent(frame: pd.DataFrame) -> list[dict]:
    out = []
    for _, group in frame.dropna(subset=["clean"]).groupby(ROW, sort=False):
        if len(group) < 2:
            continue
        reference = group["clean"].iloc[0]
        for i, value in group["clean"].items():
            bad = abs(value - reference) > CLEAN_TOLERANCE
            out.append({"cell": i, "check": "cross/clean_consistent", "passed": not bad,
                        "detail": f"clean {value:.4g}, other runs of the configuration {reference:.4g}" if bad else ""})
    return out


def cross_checks(frame: pd.DataFrame, artifacts: dict[str, CellArtifacts]) -> pd.DataFrame:
    """One row per (cell, check) evaluated: ``cell`` is the frame's index."""
    rows = eps_monotone(frame) + beats_noise(frame) + levelled(frame, artifacts) + clean_consistent(frame)
    return pd.DataFrame(rows, columns=COLUMNS)


def cell_checks(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("check/") and c != "check/eps0_max_output_gap"
            and c != "check/all_passed"]


def failures(frame: pd.DataFrame, cross: pd.DataFrame) -> dict[int, list[str]]:
    """``{frame index: [failed check, ...]}`` over the per-cell and the cross-cell checks."""
    out: dict[int, list[str]] = {}
    for check in cell_checks(frame):
        for i in frame.index[pd.to_numeric(frame[check], errors="coerce") < 1]:
            out.setdefault(i, []).append(check)
    if "check/all_passed" in frame:
        for i in frame.index[pd.to_numeric(frame["check/all_passed"], errors="coerce") < 1]:
            out.setdefault(i, []) or out[i].append("check/all_passed")
    for _, row in cross[~cross["passed"].astype(bool)].iterrows():
        out.setdefault(row["cell"], []).append(row["check"] + (f" ({row['detail']})" if row["detail"] else ""))
    return out


def failed_checks(frame: pd.DataFrame, cross: pd.DataFrame | None = None) -> pd.DataFrame:
    """Runs whose checks did not all hold, with their configuration and the checks that failed."""
    cross = cross if cross is not None else pd.DataFrame(columns=COLUMNS)
    bad = failures(frame, cross)
    if not bad:
        return pd.DataFrame()
    rows = frame.loc[list(bad)].sort_values(["task", "dataset", "config_label", "attack_label", "eps"])
    columns = ["config_label", "dataset", "attack_label", "eps", "failed"] + (["run_id"] if "run_id" in rows else [])
    return rows.assign(failed=[", ".join(bad[i]) for i in rows.index])[columns].rename(
        columns={"config_label": "configuration", "attack_label": "attack"})
