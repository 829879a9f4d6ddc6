"""The Pareto front of two maximised objectives and its plot (pandas and matplotlib only)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ssl_robust.pareto import pareto_mask, plot_pareto


def trials() -> pd.DataFrame:
    return pd.DataFrame({"number": [0, 1, 2, 3, 4, 5], "state": ["COMPLETE"] * 4 + ["PRUNED", "COMPLETE"],
                         "clean": [0.9, 0.8, 0.7, 0.85, 0.95, None], "robust": [0.3, 0.5, 0.4, 0.5, 0.1, 0.9]})


def test_front_keeps_the_non_dominated_rows_and_ties() -> None:
    frame = trials()
    assert list(frame.index[pareto_mask(frame, "clean", "robust")]) == [0, 3, 4]
    tie = pd.concat([frame, frame.iloc[[3]]], ignore_index=True)
    assert list(tie.index[pareto_mask(tie, "clean", "robust")]) == [0, 3, 4, 6]


def test_plot_writes_a_png_and_returns_the_given_front_sorted(tmp_path: Path) -> None:
    frame = trials().dropna().assign(pareto=[True, False, False, True, False])
    front = plot_pareto(frame, tmp_path / "p.png", "clean", "robust", teacher=[(0.6, 0.2), (0.6, 0.2)])
    assert list(front["number"]) == [3, 0]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    computed = plot_pareto(frame.drop(columns="pareto"), tmp_path / "q.png", "clean", "robust")
    assert list(computed["number"]) == [3, 0, 4]
