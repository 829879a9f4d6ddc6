"""How the report and the terminal name an encoder: its name, and for fine-tuned weights what they
are. A DeACL student (``runs:/<run>/checkpoints/epoch_NNN.safetensors``) is named by method, γ and
epoch, ``tiny_dinov2 · DeACL γ=2 · epoch 1``; its run id stays in the runs table."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from ssl_robust.deacl_names import STUDENT_URI


def _number(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def fine_tune_labels(run_ids: Iterable[str], runs: list[dict[str, Any]]) -> dict[str, str]:
    """``DeACL γ=2`` per DeACL run (``, dense_weight=0.5`` when it is not 0; the run id's head where
    two runs would share a label; ``DeACL run 3f9c2a71`` when its params are unknown)."""
    info = {str(r.get("run_id")): r for r in runs}
    labels = {}
    for run in run_ids:
        params = info.get(run, {})
        if "gamma" not in params:
            labels[run] = f"DeACL run {run[:8]}"
            continue
        dense = params.get("dense_weight")
        extra = f", dense_weight={_number(dense)}" if dense is not None and _number(dense) not in ("0", "nan") else ""
        labels[run] = f"DeACL γ={_number(params['gamma'])}{extra}"
    for run, label in labels.items():
        if list(labels.values()).count(label) > 1:
            labels[run] = f"{label} ({run[:8]})"
    return labels


def encoder_label(name: str, checkpoint: str | None, deacl: dict[str, str] | None = None) -> str:
    """``name``; ``name · <DeACL label> · epoch N`` for a DeACL student (``deacl``: the labels of
    ``fine_tune_labels``), ``name (<file stem>)`` for other fine-tuned weights."""
    if not checkpoint or (isinstance(checkpoint, float) and math.isnan(checkpoint)):
        return name
    checkpoint = str(checkpoint)
    found = STUDENT_URI.match(checkpoint)
    if found:
        method = (deacl or {}).get(found["run"], f"DeACL run {found['run'][:8]}")
        return f"{name} · {method} · epoch {int(found['epoch'])}"
    stem = Path(checkpoint).stem or "fine-tuned"
    if checkpoint.startswith("runs:/"):
        stem = f"{checkpoint.removeprefix('runs:/').split('/')[0][:8]}/{stem}"
    return f"{name} ({stem})"
