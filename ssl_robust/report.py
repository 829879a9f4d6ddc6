"""The poster's tables and robustness-vs-eps plots, from a sweep's finished cell results.

Works on plain rows (one dict per finished cell: params such as ``encoder``, ``dataset``, ``task``,
``attack``, ``eps`` and metrics such as ``clean/acc``), so it needs no tracking server to test.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Iterable

import matplotlib
import pandas as pd

from ssl_robust.attacks import ATTACKS
from ssl_robust.tasks import TASKS

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)


def _attack_label(name: str) -> str:
    return ATTACKS.get(name).label if name in ATTACKS else name


def _primary(row: pd.Series, prefix: str) -> float:
    value = row.get(f"{prefix}/{TASKS.get(row['task']).metric}")
    return float(value) if value is not None and not (isinstance(value, float) and math.isnan(value)) \
        else float("nan")


def encoder_label(name: str, checkpoint: str | None) -> str:
    """``name``, or ``name (<run>/<file stem>)`` for fine-tuned weights (``runs:/`` URIs name their run)."""
    if not checkpoint or (isinstance(checkpoint, float) and math.isnan(checkpoint)):
        return name
    checkpoint = str(checkpoint)
    stem = Path(checkpoint).stem or "fine-tuned"
    if checkpoint.startswith("runs:/"):
        stem = f"{checkpoint.removeprefix('runs:/').split('/')[0][:8]}/{stem}"
    return f"{name} ({stem})"


def _encoder_labels(frame: pd.DataFrame) -> list[str]:
    checkpoint = frame.get("encoder.checkpoint", pd.Series("", index=frame.index))
    return [encoder_label(name, ckpt) for name, ckpt in zip(frame["encoder"], checkpoint)]


def summary_table(rows: list[dict[str, Any]], cell_ids: set[str]) -> pd.DataFrame:
    """One row per finished cell of the grid: axes, primary clean/adv metric, sanity checks."""
    df = pd.DataFrame([r for r in rows if r.get("cell_id") in cell_ids])
    if df.empty:
        return df
    out = df[["dataset", "task", "attack", "eps_255", "steps"]].copy()
    out.insert(0, "encoder", _encoder_labels(df))
    out["metric"] = [TASKS.get(task).metric for task in df["task"]]
    out["clean"] = [_primary(r, "clean") for _, r in df.iterrows()]
    out["adv"] = [_primary(r, "adv") for _, r in df.iterrows()]
    out["checks_ok"] = df["check/all_passed"] if "check/all_passed" in df else float("nan")
    out["eps_255"] = out["eps_255"].astype(float)
    return out.sort_values(["encoder", "dataset", "task", "attack", "eps_255"]).reset_index(drop=True)


def results_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows -> one frame with numeric eps, a readable encoder label and the task's score columns."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ValueError("no finished cells to report on")
    frame["eps"] = frame["eps"].astype(float)
    frame["encoder_label"] = _encoder_labels(frame)
    frame["clean"] = [_primary(row, "clean") for _, row in frame.iterrows()]
    frame["adv"] = [_primary(row, "adv") for _, row in frame.iterrows()]
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


def poster_table(frame: pd.DataFrame, task: str, eps: float) -> pd.DataFrame:
    """Dataset x encoder rows with clean, EmbedAttack and the task attack's score at ``eps``."""
    label = TASKS.get(task).label
    sub = frame[(frame["task"] == task) & ((frame["eps"] - eps).abs() < 1e-9)]
    if sub.empty:
        return pd.DataFrame()
    clean = sub.groupby(["dataset", "encoder_label"])["clean"].mean().rename(f"Clean {label}")
    columns = [clean]
    for attack in ("embed", TASKS.get(task).own_attack):
        scores = sub[sub["attack"] == attack].groupby(["dataset", "encoder_label"])["adv"].mean()
        columns.append(scores.rename(f"{_attack_label(attack)} {label}"))
    table = pd.concat(columns, axis=1).reset_index()
    return table.rename(columns={"dataset": "Dataset", "encoder_label": "Encoder"})


def plot_curves(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One PNG per (task, data set): attacked score against eps*255, a line per encoder x attack."""
    paths = []
    for (task, dataset), sub in frame.groupby(["task", "dataset"]):
        spec = TASKS.get(task)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for (encoder, attack), line in sub.groupby(["encoder_label", "attack"]):
            line = line.groupby("eps")["adv"].mean().sort_index()
            ax.plot(line.index * 255, line.values, marker="o", label=f"{encoder} · {_attack_label(attack)}")
        ax.set(xlabel="ε × 255", ylabel=f"{spec.label} {spec.arrow()}", title=f"{dataset} ({task})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{task}_{dataset}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def failed_checks(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells whose sanity checks did not all hold, with the checks that failed."""
    check_cols = [c for c in frame.columns if c.startswith("check/") and c != "check/eps0_max_output_gap"]
    if not check_cols:
        return pd.DataFrame()
    bad = frame[(frame[check_cols] < 1).any(axis=1)]
    failed = [", ".join(c for c in check_cols if row[c] < 1) for _, row in bad.iterrows()]
    return bad.assign(failed=failed)[["encoder_label", "dataset", "attack", "eps", "failed"]]


def write_report(rows: Iterable[dict[str, Any]], out_dir: Path, eps: float | None = None,
                 title: str = "ssl_robust report") -> Path:
    """Write tables (CSV + HTML) and plots (PNG) to ``out_dir``; return the HTML page's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = results_frame(rows)
    ref = reference_eps(frame, eps)
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p>Tables at ε = {ref * 255:.3g}/255.</p>"]
    for task in TASKS.names():
        table = poster_table(frame, task, ref)
        if table.empty:
            continue
        table.to_csv(out_dir / f"table_{task}.csv", index=False)
        parts += [f"<h2>{task.capitalize()}</h2>", table.to_html(index=False, float_format="%.2f")]
    for path in plot_curves(frame, out_dir):
        parts.append(f'<img src="{path.name}" alt="{html.escape(path.stem)}">')
    bad = failed_checks(frame)
    parts.append("<h2>Sanity checks</h2>")
    parts.append(bad.to_html(index=False) if not bad.empty else "<p>All cells passed every check.</p>")
    frame.drop(columns=["clean", "adv"]).to_csv(out_dir / "cells.csv", index=False)
    page = out_dir / "index.html"
    page.write_text("<!doctype html><meta charset='utf-8'><body>" + "\n".join(parts) + "</body>")
    return page
