"""The report's tables: the poster's layout per task (plus intervals, worst case and check flags),
the robustness-vs-eps points, and the ``Table`` every output format (CSV, Markdown, HTML) renders.

A ``Table``'s ``data`` is what its CSV holds. A scored column ``C`` may come with ``C lo`` and
``C hi`` (the interval's bounds) and ``C failed`` (the checks its cell failed, "" if none); the page
and the Markdown fold them into ``C``'s cell (``0.42 [0.39, 0.45]``, red when a check failed).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ssl_robust.attacks import ATTACKS
from ssl_robust.report.frame import EPS_TOL, attack_label
from ssl_robust.tasks import TASKS

AUX = (" lo", " hi", " failed")
KEYS = ["dataset", "encoder_label", "config"]


@dataclass
class Table:
    stem: str  # file name: <stem>.csv, <stem>.md
    title: str
    data: pd.DataFrame
    arrows: dict[str, str] = field(default_factory=dict)  # scored column -> "↑" / "↓" (its better direction)
    signed: tuple[str, ...] = ()  # columns shown with their sign (differences)
    note: str = ""
    footnotes: bool = True  # Markdown lists the failed checks under the table

    @property
    def shown(self) -> list[str]:
        return [c for c in self.data.columns if not any(c.endswith(s) and c[:-len(s)] in self.data for s in AUX)]


def poster_table(frame: pd.DataFrame, task: str, eps: float) -> pd.DataFrame:
    """A row per (data set, configuration) with clean, EmbedAttack and the task attack's score at ``eps``.

    An attack run with more than one set of per-attack settings gets a column per set.
    """
    label = TASKS.get(task).label
    sub = frame[(frame["task"] == task) & ((frame["eps"] - eps).abs() < EPS_TOL)]
    if sub.empty:
        return pd.DataFrame()
    rows = sub.drop_duplicates(KEYS).set_index(KEYS)["config_label"].rename("Encoder")
    # the clean score depends on the configuration only (not the attack): every run of a row has it
    columns = [rows, sub.groupby(KEYS)["clean"].first().rename(f"Clean {label}")]
    for attack in ("embed", TASKS.get(task).own_attack):
        runs = sub[sub["attack"] == attack]
        if runs.empty:
            columns.append(pd.Series(float("nan"), index=rows.index, name=f"{attack_label(attack)} {label}"))
        for _, one in runs.groupby("attack_config", sort=False):
            scores = one.set_index(KEYS)["adv"]
            assert scores.index.is_unique, "results_frame drops duplicate runs"
            columns.append(scores.rename(f"{one['attack_label'].iloc[0]} {label}"))
    table = pd.concat(columns, axis=1).reset_index().sort_values(["dataset", "Encoder"])
    return table.drop(columns=["encoder_label", "config"]).rename(columns={"dataset": "Dataset"}) \
        .reset_index(drop=True)


def attack_order(task: str, present: set[str]) -> list[str]:
    """EmbedAttack, the task's own attack, then the others in registry order (baselines last)."""
    first = ["embed", TASKS.get(task).own_attack]
    rest = [a for a in ATTACKS.names() if a not in first and a in present]
    rest += sorted(present - set(ATTACKS.names()))
    return [a for a in first if a] + sorted(rest, key=lambda a: a in ATTACKS and ATTACKS.get(a).gradient_free)


def _scored(data: dict, name: str, value: float, lo: float, hi: float, failed: str) -> None:
    data[name], data[f"{name} lo"], data[f"{name} hi"], data[f"{name} failed"] = value, lo, hi, failed


def task_table(frame: pd.DataFrame, task: str, eps: float, ivals: pd.DataFrame, worst: pd.DataFrame,
               fails: dict[int, list[str]]) -> Table | None:
    """The poster's table of ``task`` at ``eps``: clean, every attack, the worst case over attacks,
    with intervals and the checks each cell failed."""
    spec = TASKS.get(task)
    label, arrow = spec.label, spec.arrow()
    sub = frame[(frame["task"] == task) & ((frame["eps"] - eps).abs() < EPS_TOL)]
    if sub.empty:
        return None
    columns: list[tuple[str, str]] = []  # (attack, attack_config)
    for attack in attack_order(task, set(sub["attack"])):
        configs = sub.loc[sub["attack"] == attack, "attack_config"].unique()
        columns += [(attack, c) for c in configs] or [(attack, "")]
    records = []
    for key, runs in sub.groupby(KEYS, sort=False):
        first = runs.index[0]
        data = {"Dataset": key[0], "Encoder": runs["config_label"].iloc[0]}
        clean_fail = [c for i in runs.index for c in fails.get(i, []) if c.startswith("cross/clean_consistent")]
        _scored(data, f"Clean {label}", runs.at[first, "clean"], ivals.at[first, "clean_lo"],
                ivals.at[first, "clean_hi"], "; ".join(clean_fail))
        for attack, config in columns:
            one = runs[(runs["attack"] == attack) & (runs["attack_config"] == config)]
            name = f"{_column_label(sub, attack, config)} {label}"
            if one.empty:
                _scored(data, name, np.nan, np.nan, np.nan, "")
                continue
            i = one.index[0]
            _scored(data, name, one.at[i, "adv"], ivals.at[i, "adv_lo"], ivals.at[i, "adv_hi"],
                    "; ".join(fails.get(i, [])))
        match = worst[(worst["task"] == task) & (worst["dataset"] == key[0]) & (worst["encoder_label"] == key[1])
                      & (worst["config"] == key[2]) & ((worst["eps"] - eps).abs() < EPS_TOL)]
        w = match.iloc[0] if len(match) else None
        _scored(data, f"Worst case {label}", w["worst"] if w is not None else np.nan,
                w["worst_lo"] if w is not None else np.nan, w["worst_hi"] if w is not None else np.nan, "")
        data["Worst case over"] = (w["attacks"] + (f" ({w['note']})" if w["note"] else "")) if w is not None else ""
        records.append(data)
    table = pd.DataFrame(records).sort_values(["Dataset", "Encoder"], kind="stable").reset_index(drop=True)
    scored = [c for c in table.columns if c.endswith(f" {label}")]
    return Table(f"table_{task}", f"{task.capitalize()} at ε = {eps * 255:.3g}/255", table,
                 arrows={c: arrow for c in scored})


def _column_label(sub: pd.DataFrame, attack: str, config: str) -> str:
    labels = sub.loc[(sub["attack"] == attack) & (sub["attack_config"] == config), "attack_label"]
    return labels.iloc[0] if len(labels) else attack_label(attack)


def curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The robustness-vs-eps points: one line per (task, data set, configuration, attack settings)."""
    out = frame[["task", "dataset", "config_label", "attack_label", "eps", "adv"]]
    out = out.rename(columns={"config_label": "configuration", "attack_label": "attack"})
    return out.assign(eps_255=out["eps"] * 255).sort_values(["task", "dataset", "configuration", "attack", "eps"]) \
        .reset_index(drop=True)


def curve_table(frame: pd.DataFrame, ivals: pd.DataFrame) -> pd.DataFrame:
    """``curves`` with each point's interval and run id (``curves.csv``)."""
    out = frame[["task", "dataset", "config_label", "attack_label", "eps", "adv"]].join(ivals[["adv_lo", "adv_hi"]])
    if "run_id" in frame:
        out = out.assign(run_id=frame["run_id"])
    out = out.rename(columns={"config_label": "configuration", "attack_label": "attack"})
    return out.assign(eps_255=out["eps"] * 255).sort_values(["task", "dataset", "configuration", "attack", "eps"]) \
        .reset_index(drop=True)
