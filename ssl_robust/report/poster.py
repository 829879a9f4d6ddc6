"""Our numbers beside the poster's published ones (``dashboards/reference/poster.csv``).

A run of ours is compared with a poster row only when it was run in the poster's configuration:
the same encoder at the poster's input size, the same data set and task, eps = 8/255, and for an
attacked score the poster's steps and step size (``image_size``, ``steps``, ``step_size`` columns).
The encoder's origin must match too: "Standard" is an encoder without a checkpoint; "DeACL" is the
poster's DeACL model, either its released checkpoint (a file whose name says ``deacl`` or is the
released one's) or the last-epoch student of a DeACL run with the poster's recipe (``POSTER_DEACL``:
DINO ViT-B/16 on ImageNet at eps 4/255, gamma 2; ``sweeps/deacl_poster.yaml``). Runs on the
poster's encoders and data sets in any other configuration are left out, and the table's note
counts them. Scores compared: clean, EmbedAttack (``embed``) and the task's own attack. Δ = ours − poster.
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ssl_robust.aliases import ENCODERS
from ssl_robust.report.frame import is_missing
from ssl_robust.report.intervals import text
from ssl_robust.deacl_names import STUDENT_URI
from ssl_robust.report.tables import Table
from ssl_robust.tasks import TASKS

REFERENCE = Path(__file__).resolve().parents[2] / "dashboards" / "reference" / "poster.csv"
POSTER_EPS = 8 / 255
RELEASED_DEACL = "dinov1_vitb16_imagenet_lr0-05_eps4_nodecay"  # the released checkpoint's file name starts so
POSTER_DEACL = {"encoder.name": "dino_vitb16", "data.name": "imagenet", "attack.eps": 4 / 255, "gamma": 2.0}
SCORES = {"clean": "Clean", "embed": "EmbedAttack", "task_attack": None}
COLUMNS = ["Dataset", "Encoder", "Origin", "Poster encoder", "Score", "Ours", "Ours lo", "Ours hi", "Poster", "Δ"]


def load_reference(path: Path | str | None = REFERENCE) -> pd.DataFrame | None:
    return pd.read_csv(path, dtype={"eps": str, "poster_dataset": str, "step_size": str},
                       keep_default_na=False) if path is not None and Path(path).is_file() else None


def _matches(value: Any, expected: float) -> bool:
    try:
        return math.isclose(float(value), expected, rel_tol=1e-5, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def poster_recipe(params: dict[str, Any]) -> bool:
    """Whether a DeACL run's params are the poster's recipe (``POSTER_DEACL``)."""
    return all(_matches(params.get(key), value) if isinstance(value, float) else params.get(key) == value
               for key, value in POSTER_DEACL.items())


def encoder_origin(checkpoint: str, deacl_runs: dict[str, dict[str, Any]] | None = None) -> tuple[str, str] | None:
    """(encoder type, origin) of a run's weights: ("Standard", "hub weights"), ("DeACL", "released
    checkpoint") or ("DeACL", "<run> epoch N, the poster's recipe"); None when no poster row can match
    (a checkpoint of unknown origin, a DeACL student of another recipe or of an earlier epoch)."""
    if not checkpoint or checkpoint == "(not logged)":
        return "Standard", "hub weights"
    found = STUDENT_URI.match(checkpoint)
    if found:
        params = (deacl_runs or {}).get(found["run"])
        if params is None or not poster_recipe(params) or int(found["epoch"]) != int(params.get("epochs", -1)):
            return None
        return "DeACL", f"DeACL run {found['run'][:8]} epoch {int(found['epoch'])}, the poster's recipe"
    name = Path(checkpoint).name.lower()
    if name.startswith(RELEASED_DEACL) or "deacl" in name:
        return "DeACL", f"released checkpoint {Path(checkpoint).name}"
    return None


def encoder_type(checkpoint: str, deacl_runs: dict[str, dict[str, Any]] | None = None) -> str | None:
    """"Standard", "DeACL" or None (see ``encoder_origin``)."""
    origin = encoder_origin(checkpoint, deacl_runs)
    return origin[0] if origin else None


def image_size(row: pd.Series) -> int | None:
    """The run's input size: ``encoder.image_size``, else its alias's."""
    value = row.get("encoder.image_size")
    if not is_missing(value) and str(value) not in ("", "None", "(not logged)"):
        return int(float(value))
    name = row.get("encoder")
    return ENCODERS.get(name).image_size if name in ENCODERS else None


def step_size(row: pd.Series) -> float:
    """The run's resolved step size: ``attack.step_size``, else 2.5 eps / steps."""
    value = row.get("attack.step_size")
    if not is_missing(value) and str(value) not in ("", "None", "(not logged)"):
        return float(value)
    return 2.5 * float(row["eps"]) / max(int(float(row.get("attack.steps", row.get("steps", 1)))), 1)


def _attack_matches(run: pd.Series, poster: pd.Series) -> bool:
    steps = run.get("attack.steps", run.get("steps"))
    return (not is_missing(steps) and int(float(steps)) == int(poster["steps"])
            and math.isclose(step_size(run), float(Fraction(poster["step_size"])), rel_tol=1e-4))


def compare(frame: pd.DataFrame, reference: pd.DataFrame | None, ivals: pd.DataFrame,
            deacl_runs: list[dict[str, Any]] | None = None) -> dict[str, Table]:
    """Per task, one row per (our run in the poster's configuration, score) beside the poster's."""
    if reference is None:
        return {}
    runs_by_id = {str(r.get("run_id")): r for r in deacl_runs or []}
    ours = frame[(frame["eps"] - POSTER_EPS).abs() < 1e-6]
    checkpoint = ours.get("encoder.checkpoint", pd.Series("", index=ours.index)).fillna("").astype(str)
    origins = checkpoint.map(lambda c: encoder_origin(c, runs_by_id))
    types = origins.map(lambda o: o[0] if o else None)
    sizes = ours.apply(image_size, axis=1) if len(ours) else pd.Series(dtype=object)
    tables = {}
    for task, ref in reference.groupby("task", sort=False):
        spec = TASKS.get(task)
        compared_attacks = {"embed", spec.own_attack}
        records, considered, compared = [], set(), set()
        for _, poster in ref.iterrows():
            candidates = ours[(ours["task"] == task) & (ours["dataset"] == poster["dataset"])
                              & (ours["encoder"] == poster["encoder"]) & ours["attack"].isin(compared_attacks)]
            fits = candidates[(types[candidates.index] == poster["encoder_type"])
                              & (sizes[candidates.index] == int(poster["image_size"]))]
            fits = fits[pd.Series([_attack_matches(run, poster) for _, run in fits.iterrows()], index=fits.index,
                                  dtype=bool)]
            considered |= set(candidates.index)
            compared |= set(fits.index)
            for _, runs in fits.groupby(["config", "encoder_label"], sort=False):
                first = runs.index[0]
                rows = [("Clean", runs.at[first, "clean"], ivals.at[first, "clean_lo"], ivals.at[first, "clean_hi"],
                         poster["clean"])]
                for attack, column in (("embed", "embed"), (spec.own_attack, "task_attack")):
                    for i, run in runs[runs["attack"] == attack].iterrows():
                        rows.append((run["attack_label"], run["adv"], ivals.at[i, "adv_lo"], ivals.at[i, "adv_hi"],
                                     poster[column]))
                for score, value, lo, hi, published in rows:
                    records.append({"Dataset": poster["dataset"], "Encoder": runs.at[first, "config_label"],
                                    "Origin": origins[first][1],
                                    "Poster encoder": f"{poster['poster_encoder']} ({poster['encoder_type']})",
                                    "Score": score, "Ours": value, "Ours lo": lo, "Ours hi": hi,
                                    "Poster": float(published), "Δ": value - float(published)})
        data = pd.DataFrame(records, columns=COLUMNS)
        data.attrs["left_out"] = len(considered - compared)
        label = f"{spec.label} {spec.arrow()}"
        tables[task] = Table(f"poster_{task}", f"{task.capitalize()}: ours and the poster's ({label}, ε = 8/255)",
                             data, arrows={"Ours": spec.arrow(), "Poster": spec.arrow()}, signed=("Δ",),
                             note=_note(ref, len(data), len(considered - compared)))
    return tables


def configuration_text(ref: pd.DataFrame) -> str:
    """The poster's configuration in words: each encoder at its input size, the steps, eps."""
    sizes = ref[["encoder", "image_size"]].drop_duplicates().itertuples(index=False)
    budgets = ref[["steps", "step_size"]].drop_duplicates().itertuples(index=False)
    settings = ", ".join(f"{encoder} at {size} px" for encoder, size in sizes)
    budget = " or ".join(f"{steps} steps of {size}" for steps, size in budgets)
    return f"{settings}; {budget}; ε = 8/255"


def _note(ref: pd.DataFrame, matched: int, left_out: int) -> str:
    parts = [] if matched else [f"No run of this report is in the poster's configuration ({configuration_text(ref)})."]
    if left_out:
        parts.append(f"{left_out} attack run(s) on the poster's encoders and data sets are left out: their input "
                     f"size, steps, step size or encoder origin differ from the poster's.")
    return " ".join(parts)


def summary(table: Table) -> str:
    """One line: how many matched scores and their largest difference, then the table's note."""
    data = table.data
    if data.empty or not np.isfinite(data["Δ"]).any():
        return table.note
    worst = data.loc[data["Δ"].abs().idxmax()]
    line = (f"{len(data)} scores matched; largest |Δ| = {abs(worst['Δ']):.2f} "
            f"({worst['Encoder']}, {worst['Dataset']}, {worst['Score']}: ours {text(worst['Ours'])}, "
            f"poster {worst['Poster']:.2f}).")
    return f"{line} {table.note}".strip()
