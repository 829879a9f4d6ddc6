"""Finished cell rows -> one frame: numeric eps, the task's primary scores, configuration keys and labels.

Works on plain rows (one dict per finished cell: the flattened resolved cell config such as
``attack.steps``, short names such as ``encoder``, ``dataset``, ``task``, ``attack``, ``eps`` and
metrics such as ``clean/acc``), so it needs no tracking server to test.

No number is averaged with another. A run's *configuration* is every field of its flattened cell
config except the tables' axes (``AXES``: the attack and its eps), the per-attack settings
(``PER_ATTACK``: they belong to the attack's column) and the locations (``config.LOCATIONS``: where
and how things run, not what is computed, the fields ``cell_id`` leaves out too). Runs of one
(task, data set, encoder) whose configurations differ get their own table rows and curves,
labelled with the fields that vary in that group, e.g. ``dinov2_vits14 [steps=20,
encoder.image_size=518]``; an attack run with different per-attack settings gets its own column
and curve, e.g. ``PGD [attack.restarts=5]``. Two runs with the same
configuration, attack, per-attack settings and eps are duplicates: the oldest (``start_time``,
else the first given) is kept and the others are listed on the page.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import pandas as pd
from pydantic import BaseModel

from ssl_robust.attacks import ATTACKS
from ssl_robust.config import LOCATIONS, AttackCfg, CellFields
from ssl_robust.deacl_names import STUDENT_URI
from ssl_robust.report.labels import encoder_label, fine_tune_labels
from ssl_robust.tasks import TASKS

AXES = ("attack.name", "attack.eps")  # the tables' columns and the curves' x axis
PER_ATTACK = tuple(f"attack.{name}" for name in AttackCfg.model_fields if name not in ("name", "eps", "steps"))
MISSING = "(not logged)"
_SECTIONS = {name for name, f in CellFields.model_fields.items()
             if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
_SCALARS = set(CellFields.model_fields) - _SECTIONS  # seed, batch_size, device
_SHORT = {"attack.steps": "steps"}
_IDENTITY = ["task", "dataset", "encoder_label", "config", "attack", "attack_config", "eps"]
ROW = ["task", "dataset", "encoder_label", "config"]  # one table row / curve family per key
EPS_TOL = 1e-6  # eps values are logged with 6 significant digits


def attack_label(name: str) -> str:
    return ATTACKS.get(name).label if name in ATTACKS else name


def gradient_free(name: str) -> bool:
    """An attack without gradient steps (the uniform-noise baseline)."""
    return name in ATTACKS and bool(getattr(ATTACKS.get(name), "gradient_free", False))


def aims_at_task(name: str) -> bool:
    """A registered attack that searches for a worse task score (``AttackSpec.aims_at_task``)."""
    return name in ATTACKS and ATTACKS.get(name).aims_at_task


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _primary(row: pd.Series, prefix: str) -> float:
    value = row.get(f"{prefix}/{TASKS.get(row['task']).metric}")
    return float("nan") if is_missing(value) else float(value)


def _encoder_labels(frame: pd.DataFrame, deacl_runs: list[dict[str, Any]] | None = None) -> list[str]:
    checkpoint = frame.get("encoder.checkpoint", pd.Series("", index=frame.index))
    runs = {m["run"] for c in checkpoint if (m := STUDENT_URI.match(str(c or "")))}
    deacl = fine_tune_labels(sorted(runs), deacl_runs or [])
    return [encoder_label(name, None if is_missing(ckpt) else ckpt, deacl)
            for name, ckpt in zip(frame["encoder"], checkpoint)]


def summary_table(rows: list[dict[str, Any]], cell_ids: set[str],
                  deacl_runs: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """The terminal's table of a sweep's finished cells: one row per (encoder, data set, task,
    attack, steps) and configuration, the clean score, the attacked score at each ε (a column per
    ε, ``×255``) and the check flags (``ok``, or how many of the row's cells failed one). Rows that
    differ in another field say which in a ``settings`` column."""
    df = pd.DataFrame([r for r in rows if r.get("cell_id") in cell_ids])
    if df.empty:
        return df
    fields = [f for f in config_fields(df.columns) if f != "attack.steps"]
    df = df.assign(encoder=_encoder_labels(df, deacl_runs), metric=[TASKS.get(task).metric for task in df["task"]],
                   clean=[_primary(r, "clean") for _, r in df.iterrows()],
                   adv=[_primary(r, "adv") for _, r in df.iterrows()],
                   eps_255=df["eps_255"].astype(float),
                   failed=(df["check/all_passed"] if "check/all_passed" in df else pd.Series(1.0, index=df.index)) < 1,
                   config=[json.dumps([_text(v) for v in values]) for values in df[fields].values.tolist()])
    keys = ["encoder", "dataset", "task", "attack", "steps", "metric"]
    df["settings"] = _labels(df, keys, fields, pd.Series("", index=df.index)).str.strip(" []")
    out = []
    for key, group in df.sort_values([*keys, "eps_255"]).groupby([*keys, "config"], sort=True):
        row = dict(zip(keys, key), settings=group["settings"].iloc[0], clean=group["clean"].iloc[0])
        row.update({f"{eps:g}/255": adv for eps, adv in zip(group["eps_255"], group["adv"])})
        failed = int(group["failed"].sum())
        row["checks"] = "ok" if not failed else f"{failed} failed"
        out.append(row)
    table = pd.DataFrame(out)
    eps_columns = sorted((c for c in table.columns if c.endswith("/255")), key=lambda c: float(c[:-4]))
    settings = ["settings"] if table["settings"].astype(bool).any() else []
    return table[[*keys, *settings, "clean", *eps_columns, "checks"]]


def config_fields(columns: Iterable[str]) -> list[str]:
    """The columns that make up a run's configuration: cell-config fields less axes and locations."""
    return sorted(c for c in columns if (c in _SCALARS or ("." in c and c.split(".", 1)[0] in _SECTIONS))
                  and c not in AXES + LOCATIONS)


def _text(value: Any) -> str:
    return MISSING if is_missing(value) else str(value)


def describe(fields: list[str], values: Iterable[str]) -> str:
    return ", ".join(f"{_SHORT.get(f, f)}={v if v != '' else 'None'}" for f, v in zip(fields, values))


def short(field: str) -> str:
    return _SHORT.get(field, field)


def _labels(frame: pd.DataFrame, group: list[str], fields: list[str], base: pd.Series) -> pd.Series:
    """``base``, plus ``[field=value, ...]`` for the fields that vary within the row's group."""
    out = base.astype(str).copy()
    for _, sub in frame.groupby(group, sort=False):
        varying = [f for f in fields if sub[f].nunique() > 1]
        if varying:
            out[sub.index] = [f"{b} [{describe(varying, vals)}]"
                              for b, vals in zip(base[sub.index], sub[varying].itertuples(index=False))]
    return out


def _drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep the oldest run of each (configuration, attack, settings, eps); describe the others."""
    if "start_time" in frame:
        frame = frame.sort_values("start_time", kind="stable")
    ids = frame["run_id"].astype(str) if "run_id" in frame else pd.Series(
        [f"row {i}" for i in frame.index], index=frame.index)
    kept = ids.groupby([frame[c] for c in _IDENTITY], sort=False).transform("first")
    dup = frame.duplicated(_IDENTITY, keep="first")
    notes = [f"{ids[i]} (same as {kept[i]}: {frame.at[i, 'config_label']} · {frame.at[i, 'attack_label']} "
             f"at ε = {frame.at[i, 'eps'] * 255:.3g}/255)" for i in frame.index[dup]]
    return frame[~dup].sort_index(), notes


def results_frame(rows: Iterable[dict[str, Any]], deacl_runs: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """Rows -> one frame with numeric eps, the task's scores, configuration keys and labels.

    ``config`` / ``attack_config`` key the configuration and the per-attack settings,
    ``config_label`` / ``attack_label`` name them; duplicates are dropped (``attrs["duplicates"]``);
    ``attrs["row_fields"]`` are the fields of ``config``.
    """
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ValueError("no finished cells to report on")
    frame["eps"] = frame["eps"].astype(float)
    frame["encoder_label"] = _encoder_labels(frame, deacl_runs)
    frame["clean"] = [_primary(row, "clean") for _, row in frame.iterrows()]
    frame["adv"] = [_primary(row, "adv") for _, row in frame.iterrows()]
    fields = config_fields(frame.columns)
    for name in fields:
        frame[name] = [_text(v) for v in frame[name]]
    row_fields = [f for f in fields if f not in PER_ATTACK]
    attack_fields = [f for f in fields if f in PER_ATTACK]
    frame["config"] = [json.dumps(v) for v in frame[row_fields].values.tolist()]
    frame["attack_config"] = [json.dumps(v) for v in frame[attack_fields].values.tolist()]
    frame["config_label"] = _labels(frame, ["task", "dataset", "encoder_label"], row_fields, frame["encoder_label"])
    frame["attack_label"] = _labels(frame, ["task", "attack"], attack_fields, frame["attack"].map(attack_label))
    frame, duplicates = _drop_duplicates(frame)
    frame.attrs.update(duplicates=duplicates, fields=fields, row_fields=row_fields)
    return frame


def reference_eps(frame: pd.DataFrame, wanted: float | None = None) -> float:
    """The eps of the poster-style table: the one asked for, else 8/255 if swept, else the largest."""
    available = sorted(frame["eps"].unique())
    if wanted is not None:
        near = min(available, key=lambda e: abs(e - wanted))
        if abs(near - wanted) > 1e-6:
            raise ValueError(f"eps {wanted:.5f} not in the sweep; available: {[round(e, 5) for e in available]}")
        return near
    return min(available, key=lambda e: abs(e - 8 / 255)) if any(abs(e - 8 / 255) < 1e-6 for e in available) \
        else available[-1]


def _set(value: Any) -> bool:
    """A value worth showing: not unset (``None``, empty) and not missing from the logged params."""
    return str(value) not in ("None", "", "{}", "[]", MISSING)


def settings_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The settings every run of the report shares, one row per section (encoder, data, head,
    attack, run), unset fields left out: ``Section``, ``Settings``."""
    fields = frame.attrs.get("fields") or config_fields(frame.columns)
    rows: dict[str, list[str]] = {}
    for field in fields:
        if frame[field].nunique() != 1 or not _set(frame[field].iloc[0]):
            continue
        section, _, name = field.partition(".") if "." in field else ("run", "", field)
        rows.setdefault(section, []).append(f"{name}={frame[field].iloc[0]}")
    order = ["encoder", "data", "head", "attack", "run"]
    return pd.DataFrame([{"Section": section, "Settings": ", ".join(rows[section])}
                         for section in sorted(rows, key=lambda s: order.index(s) if s in order else len(order))],
                        columns=["Section", "Settings"])


def configuration_lines(frame: pd.DataFrame) -> list[str]:
    """Beside the settings table: what is set per attack, and what varies (named per row)."""
    fields = frame.attrs.get("fields") or config_fields(frame.columns)
    fixed = [f for f in fields if frame[f].nunique() == 1]
    per_attack = [f for f in fields if f in PER_ATTACK and f not in fixed
                  and frame.groupby("attack")[f].nunique().max() == 1]
    varying = [f for f in fields if f not in fixed and f not in per_attack]
    lines = []
    if per_attack:
        by_attack = frame.groupby("attack")[per_attack].first()
        lines.append("Set per attack: " + "; ".join(f"{attack_label(a)}: {describe(per_attack, row)}"
                                                    for a, row in zip(by_attack.index, by_attack.values)) + ".")
    lines.append("Varying (named in a row's or column's label where they differ within its data set and "
                 f"encoder): {', '.join(short(f) for f in varying) or '(none)'}. Unset fields take their "
                 "defaults (the encoder alias's input size and normalisation, the attack's step size 2.5·ε/steps).")
    return lines
