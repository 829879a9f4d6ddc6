"""Pareto front of two objectives (both maximised) and its scatter plot; pandas and matplotlib only."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure


def pareto_mask(frame: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for rows no other row beats in both ``x`` and ``y`` (ties kept); NaN rows are False."""
    valid = frame[[x, y]].notna().all(axis=1)
    points = frame.loc[valid, [x, y]]
    keep = pd.Series(False, index=frame.index)
    for index, (px, py) in points.iterrows():
        dominated = ((points[x] >= px) & (points[y] >= py) & ((points[x] > px) | (points[y] > py))).any()
        keep[index] = not dominated
    return keep


def plot_pareto(frame: pd.DataFrame, path: Path, x: str, y: str, front_col: str = "pareto",
                teacher: list[tuple[float, float]] = (), title: str = "", *, color: str = "tab:blue",
                front_color: str = "tab:red") -> pd.DataFrame:
    """Scatter every trial (``x`` vs ``y``, in ``color``), the front (rows with ``front_col`` true,
    else the non-dominated ones) highlighted in ``front_color`` and labelled by trial ``number``,
    and teacher points; writes a PNG to ``path`` and returns the front sorted by ``x``."""
    on_front = frame[front_col].astype(bool) if front_col in frame else pareto_mask(frame, x, y)
    front = frame[on_front].sort_values(x)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    others = frame[~on_front]
    done = others["state"].eq("COMPLETE") if "state" in others else pd.Series(True, index=others.index)
    ax.scatter(others.loc[done, x], others.loc[done, y], c=color, alpha=0.6, label="trials")
    if (~done).any():
        ax.scatter(others.loc[~done, x], others.loc[~done, y], c="lightgray", edgecolors="gray",
                   label="stopped early (last epoch)")
    ax.plot(front[x], front[y], "o-", c=front_color, drawstyle="steps-pre", label="Pareto front")
    for _, row in front.iterrows():
        if "number" in row:
            ax.annotate(str(int(row["number"])), (row[x], row[y]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
    if teacher:
        tx, ty = zip(*sorted(set(teacher)))
        ax.scatter(tx, ty, marker="*", s=160, c="black", label="teacher (epoch 0)")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return front
