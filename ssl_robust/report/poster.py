"""Our numbers beside the poster's published ones (``dashboards/reference/poster.csv``).

A row of ours matches a poster row when the encoder, the data set and the eps (8/255) agree and the
encoder type does: "Standard" is an encoder without a checkpoint, "DeACL" one whose checkpoint is a
DeACL run's (``runs:/<run>/checkpoints/epoch_NNN.safetensors``) or whose file name says ``deacl``.
Scores compared: clean, EmbedAttack (``embed``) and the task's own attack (each set of per-attack
settings on its own row). Δ = ours − poster.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_robust.report.intervals import text
from ssl_robust.report.tables import Table
from ssl_robust.tasks import TASKS

REFERENCE = Path(__file__).resolve().parents[2] / "dashboards" / "reference" / "poster.csv"
POSTER_EPS = 8 / 255
DEACL_CHECKPOINT = re.compile(r"^runs:/(?P<run>[^/]+)/checkpoints/epoch_(?P<epoch>\d+)\.safetensors$")
SCORES = {"clean": "Clean", "embed": "EmbedAttack", "task_attack": None}


def load_reference(path: Path | str | None = REFERENCE) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype={"eps": str, "poster_dataset": str}, keep_default_na=False) \
        if path is not None and Path(path).is_file() else None


def encoder_type(checkpoint: str) -> str | None:
    """"Standard", "DeACL" or None (a checkpoint of unknown origin matches no poster row)."""
    if not checkpoint or checkpoint == "(not logged)":
        return "Standard"
    if DEACL_CHECKPOINT.match(checkpoint) or "deacl" in Path(checkpoint).name.lower():
        return "DeACL"
    return None


def compare(frame: pd.DataFrame, reference: pd.DataFrame | None, ivals: pd.DataFrame) -> dict[str, Table]:
    """Per task, one row per (our row, score) matching a poster row at eps = 8/255."""
    if reference is None:
        return {}
    ours = frame[(frame["eps"] - POSTER_EPS).abs() < 1e-6]
    checkpoint = ours.get("encoder.checkpoint", pd.Series("", index=ours.index)).fillna("").astype(str)
    types = checkpoint.map(encoder_type)
    tables = {}
    for task, ref in reference.groupby("task", sort=False):
        spec = TASKS.get(task)
        records = []
        for _, poster in ref.iterrows():
            match = ours[(ours["task"] == task) & (ours["dataset"] == poster["dataset"])
                         & (ours["encoder"] == poster["encoder"]) & (types == poster["encoder_type"])]
            for key, runs in match.groupby(["config"], sort=False):
                first = runs.index[0]
                rows = [("Clean", runs.at[first, "clean"], ivals.at[first, "clean_lo"], ivals.at[first, "clean_hi"],
                         poster["clean"])]
                for attack, column in (("embed", "embed"), (spec.own_attack, "task_attack")):
                    for i, run in runs[runs["attack"] == attack].iterrows():
                        rows.append((run["attack_label"], run["adv"], ivals.at[i, "adv_lo"], ivals.at[i, "adv_hi"],
                                     poster[column]))
                for score, value, lo, hi, published in rows:
                    records.append({"Dataset": poster["dataset"], "Encoder": runs.at[first, "config_label"],
                                    "Poster encoder": f"{poster['poster_encoder']} ({poster['encoder_type']})",
                                    "Score": score, "Ours": value, "Ours lo": lo, "Ours hi": hi,
                                    "Poster": float(published), "Δ": value - float(published)})
        label = f"{spec.label} {spec.arrow()}"
        data = pd.DataFrame(records, columns=["Dataset", "Encoder", "Poster encoder", "Score", "Ours", "Ours lo",
                                              "Ours hi", "Poster", "Δ"])
        note = "" if len(data) else (f"No row of this report matches a poster row ({len(ref)} rows: "
                                     f"{', '.join(sorted(set(ref['dataset'])))} × DINO encoders) at ε = 8/255.")
        tables[task] = Table(f"poster_{task}", f"{task.capitalize()}: ours and the poster's ({label}, ε = 8/255)",
                             data, arrows={"Ours": spec.arrow(), "Poster": spec.arrow()}, signed=("Δ",), note=note)
    return tables


def summary(table: Table) -> str:
    """One line: how many matched scores and their largest difference."""
    data = table.data
    if data.empty:
        return table.note
    worst = data.loc[data["Δ"].abs().idxmax()]
    return (f"{len(data)} scores matched; largest |Δ| = {abs(worst['Δ']):.2f} "
            f"({worst['Encoder']}, {worst['Dataset']}, {worst['Score']}: ours {text(worst['Ours'])}, "
            f"poster {worst['Poster']:.2f}).") if np.isfinite(data["Δ"]).any() else table.note
