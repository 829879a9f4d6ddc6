"""The poster's DeACL figure: each task's clean and attacked score against DeACL fine-tuning epoch.

A DeACL sweep's benchmark cells carry ``encoder.checkpoint = runs:/<deacl run>/checkpoints/
epoch_NNN.safetensors``; epoch 0 is the teacher (the same encoder without a checkpoint, in a cell of
the same configuration otherwise). One line per fine-tune config (its DeACL run: γ, dense_weight),
one point per benchmarked epoch, at the report's eps.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ssl_robust.report.frame import EPS_TOL, MISSING, describe
from ssl_robust.deacl_names import STUDENT_URI
from ssl_robust.report.labels import fine_tune_labels
from ssl_robust.report.tables import Table
from ssl_robust.tasks import TASKS

COLUMNS = ["task", "dataset", "fine_tune", "deacl_run", "epoch", "series", "series_label", "value", "lo", "hi",
           "cell_run"]


def deacl_points(frame: pd.DataFrame, runs: list[dict[str, Any]], eps: float, ivals: pd.DataFrame) -> pd.DataFrame:
    """Long rows: per (task, data set, fine-tune, epoch) the clean score and each attack's score."""
    if "encoder.checkpoint" not in frame:
        return pd.DataFrame(columns=COLUMNS)
    at = frame[(frame["eps"] - eps).abs() < EPS_TOL]
    ckpt = at["encoder.checkpoint"].fillna("").astype(str)
    parsed = ckpt.str.extract(STUDENT_URI)
    fields = [f for f in frame.attrs.get("row_fields", []) if f != "encoder.checkpoint"]
    base = pd.Series([json.dumps(v) for v in at[fields].values.tolist()], index=at.index) if fields else \
        pd.Series("", index=at.index)
    students = at[parsed["run"].notna()]
    teachers = at[ckpt.isin(["", MISSING])]
    labels = fine_tune_labels(sorted(set(parsed["run"].dropna())), runs)
    rows = []
    for (task, dataset), group in students.groupby(["task", "dataset"], sort=True):
        bases = base[group.index].unique()
        varying = [f for f in fields if at.loc[group.index, f].nunique() > 1]
        for (run, key), line in group.groupby([parsed.loc[group.index, "run"], base[group.index]], sort=True):
            name = labels[run]
            if len(bases) > 1 and varying:
                name += f" [{describe(varying, at.loc[line.index[0], varying])}]"
            teacher = teachers[(teachers["task"] == task) & (teachers["dataset"] == dataset)
                               & (base[teachers.index] == key) & (teachers["encoder"] == line["encoder"].iloc[0])]
            epochs = [(0, teacher)] + [(int(e), cells) for e, cells in
                                       line.groupby(parsed.loc[line.index, "epoch"].astype(int), sort=True)]
            for epoch, cells in epochs:
                if cells.empty:
                    continue
                first = cells.index[0]
                common = {"task": task, "dataset": dataset, "fine_tune": name, "deacl_run": run, "epoch": epoch}
                rows.append({**common, "series": "clean", "series_label": "Clean", "value": cells.at[first, "clean"],
                             "lo": ivals.at[first, "clean_lo"], "hi": ivals.at[first, "clean_hi"],
                             "cell_run": cells.get("run_id", pd.Series("", index=cells.index))[first]})
                for i, cell in cells.iterrows():
                    rows.append({**common, "series": cell["attack"], "series_label": cell["attack_label"],
                                 "value": cell["adv"], "lo": ivals.at[i, "adv_lo"], "hi": ivals.at[i, "adv_hi"],
                                 "cell_run": cell.get("run_id", "")})
    return pd.DataFrame(rows, columns=COLUMNS)


def deacl_tables(points: pd.DataFrame, eps: float) -> list[Table]:
    """Per task: a row per (data set, fine-tune, epoch), a column per score, with intervals."""
    tables = []
    for task, sub in points.groupby("task", sort=True):
        spec = TASKS.get(task)
        series = ["Clean"] + sorted(set(sub["series_label"]) - {"Clean"})
        records = []
        for (dataset, tune, run, epoch), cells in sub.groupby(["dataset", "fine_tune", "deacl_run", "epoch"],
                                                               sort=True):
            data: dict[str, Any] = {"Dataset": dataset, "Fine-tune": tune, "DeACL run": run, "Epoch": epoch}
            for label in series:
                one = cells[cells["series_label"] == label]
                name = f"{label} {spec.label}"
                data[name] = one["value"].iloc[0] if len(one) else np.nan
                data[f"{name} lo"] = one["lo"].iloc[0] if len(one) else np.nan
                data[f"{name} hi"] = one["hi"].iloc[0] if len(one) else np.nan
            records.append(data)
        table = pd.DataFrame(records)
        arrows = {f"{label} {spec.label}": spec.arrow() for label in series}
        tables.append(Table(f"deacl_{task}", f"{task.capitalize()} over DeACL epochs (ε = {eps * 255:.3g}/255; "
                                             "epoch 0 = the teacher)", table, arrows=arrows))
    return tables
