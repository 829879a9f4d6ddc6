"""The report's figures (PNG), drawn with one ``Style``: one colour per encoder (or DeACL fine-tune)
and one line style per attack in every plot, bands for the intervals, better direction on the y axis."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402  (after choosing the file-only backend)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ssl_robust.attacks import ATTACKS  # noqa: E402
from ssl_robust.pareto import plot_pareto  # noqa: E402
from ssl_robust.report.frame import EPS_TOL  # noqa: E402
from ssl_robust.tasks import TASKS  # noqa: E402

# Okabe-Ito first (colour-blind safe), then more distinct hues; red is left to failing checks
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#9467BD", "#8C564B", "#17BECF",
           "#BCBD22", "#7F7F7F", "#000000", "#393B79", "#637939", "#8C6D31", "#7B4173"]
LINE_STYLES = {"clean": "-", "worst": "-", "embed": (0, (6, 2)), "embed_cos": (0, (6, 2, 1, 2)),
               "pgd": "-.", "segpgd": (0, (3, 1, 1, 1, 1, 1)), "depthpgd": (0, (8, 2, 2, 2)),
               "noise": (0, (1, 3))}
_EXTRA_STYLES = [(0, (2 + i % 4, 1, 1, 1 + i // 4)) for i in range(24)]  # dash, gap, dot, gap: all distinct
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


class Style:
    """Colours fixed for the whole report from every key it will draw, in sorted order."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.colours = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(sorted(set(keys)))}

    def colour(self, key: str) -> str:
        return self.colours.get(key, "#444444")

    @staticmethod
    def line(series: str) -> object:
        """The line style of an attack name, ``clean`` or ``worst``."""
        if series in LINE_STYLES:
            return LINE_STYLES[series]
        names = [n for n in ATTACKS.names() if n not in LINE_STYLES]
        return _EXTRA_STYLES[names.index(series) % len(_EXTRA_STYLES)] if series in names else "-"

    @staticmethod
    def width(series: str) -> float:
        return 3.4 if series == "worst" else 1.6  # the worst case: thick solid; clean: thin solid


def _axis_label(task: str) -> str:
    spec = TASKS.get(task)
    return f"{spec.label} {spec.arrow()} ({'higher' if spec.higher_is_better else 'lower'} is better)"


def _save(fig: Figure, path: Path, extra: list | None = None) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight", bbox_extra_artists=extra)
    return path


def plot_curves(frame: pd.DataFrame, ivals: pd.DataFrame, worst: pd.DataFrame, style: Style,
                out_dir: Path) -> list[Path]:
    """One PNG per (task, data set): ``curve_figure``."""
    paths = []
    points = frame.join(ivals)
    for (task, dataset), sub in points.groupby(["task", "dataset"], sort=True):
        wc = worst[(worst["task"] == task) & (worst["dataset"] == dataset)].dropna(subset=["worst"])
        paths.append(_save(curve_figure(sub, wc, style), out_dir / f"{task}_{dataset}.png"))
    return paths


def _band(ax, x: pd.Series, lo: pd.Series, hi: pd.Series, colour: str) -> None:
    """A 95 % interval as its two bounds, thin dotted lines in the series' colour: filled bands of
    two encoders would mix into a third colour where they overlap."""
    for bound in (lo, hi):
        ax.plot(x, bound, color=colour, linestyle=":", lw=0.9, alpha=0.8, zorder=0.5)


def curve_figure(sub: pd.DataFrame, wc: pd.DataFrame, style: Style) -> Figure:
    """The attacked scores of one (task, data set). Over several eps: score against eps*255, a line
    per configuration x attack (colour: encoder, style: attack, marker: configuration) with its 95 %
    interval as error bars, drawn over the worst case over attacks (wide, translucent, its interval
    as dotted bounds), x ticks at the swept eps. At a single eps > 0: the same scores as bars (``_bars``)."""
    task, dataset = sub["task"].iloc[0], sub["dataset"].iloc[0]
    moved = sub[sub["eps"] > 0]
    if len(moved) and moved["eps"].nunique() == 1:
        return _bars(moved, wc[wc["eps"] > 0], task, dataset, style)
    fig = Figure(figsize=(7.2, 4.2))
    ax = fig.add_subplot()
    configs = {c: MARKERS[i % len(MARKERS)] for i, c in enumerate(sorted(sub["config_label"].unique()))}
    for config, line in wc.groupby("config_label", sort=True):
        line = line.sort_values("eps_255")
        colour = style.colour(line["encoder_label"].iloc[0])
        ax.plot(line["eps_255"], line["worst"], color=colour, linestyle=style.line("worst"), alpha=0.35,
                lw=style.width("worst") * 2, solid_capstyle="round", zorder=1,
                label=f"{config} · worst case over attacks")
        _band(ax, line["eps_255"], line["worst_lo"], line["worst_hi"], colour)
    for (config, attack, label), line in sub.groupby(["config_label", "attack", "attack_label"], sort=True):
        line = line.sort_values("eps")
        colour = style.colour(line["encoder_label"].iloc[0])
        errors = np.vstack([(line["adv"] - line["adv_lo"]).clip(lower=0), (line["adv_hi"] - line["adv"]).clip(lower=0)])
        ax.errorbar(line["eps"] * 255, line["adv"], yerr=None if np.isnan(errors).all() else errors, color=colour,
                    linestyle=style.line(attack), marker=configs[config], lw=style.width(attack), ms=4,
                    capsize=2, elinewidth=0.8, zorder=3, label=f"{config} · {label}")
    ax.set(xlabel="ε × 255", ylabel=_axis_label(task), title=f"{dataset} ({task}): attacked score vs ε")
    ax.set_xticks(sorted({round(float(e) * 255, 3) for e in sub["eps"].unique()}))  # eps are logged to 6 digits
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def _bars(sub: pd.DataFrame, wc: pd.DataFrame, task: str, dataset: str, style: Style) -> Figure:
    """One eps: a horizontal bar per configuration x attack and per configuration's worst case
    (hatched), the clean score as a black tick on each bar, 95 % intervals as error bars."""
    eps = float(sub["eps"].iloc[0])
    bars = [(f"{row['config_label']} · {row['attack_label']}", row["adv"], row["adv_lo"], row["adv_hi"], row["clean"],
             style.colour(row["encoder_label"]), "")
            for _, row in sub.sort_values(["config_label", "attack_label"]).iterrows()]
    bars += [(f"{row['config_label']} · worst case over attacks", row["worst"], row["worst_lo"], row["worst_hi"],
              row["clean"], style.colour(row["encoder_label"]), "//") for _, row in wc.iterrows()]
    fig = Figure(figsize=(7.2, 0.9 + 0.32 * len(bars)))
    ax = fig.add_subplot()
    y = np.arange(len(bars))[::-1]
    for k, (label, value, lo, hi, clean, colour, hatch) in zip(y, bars):
        err = None if np.isnan([lo, hi]).any() else [[max(value - lo, 0)], [max(hi - value, 0)]]
        ax.barh(k, value, color=colour, alpha=0.85, hatch=hatch, edgecolor="#333333" if hatch else colour,
                xerr=err, capsize=2, error_kw={"elinewidth": 0.8})
        if np.isfinite(clean):
            ax.plot([clean, clean], [k - 0.4, k + 0.4], color="#333333", lw=1.4)
    ax.set_yticks(y, [b[0] for b in bars], fontsize=7)
    ax.set(xlabel=_axis_label(task), title=f"{dataset} ({task}) at ε = {eps * 255:.3g}/255 (black tick: clean)")
    ax.grid(alpha=0.3, axis="x")
    return fig


def _legends(ax, colours: dict[str, str], series: dict[str, str], style: Style) -> object:
    """Two legends: colour = encoder / fine-tune, line style = score; returns the first (drawn as an
    extra artist, which the saved figure's bounding box must include)."""
    first = ax.legend([Line2D([], [], color=c, lw=2) for c in colours.values()], list(colours), fontsize=7,
                      title="colour", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.add_artist(first)
    ax.legend([Line2D([], [], color="#333333", linestyle=style.line(s), lw=style.width(s)) for s in series],
              list(series.values()), fontsize=7, title="line", title_fontsize=7, loc="lower left",
              bbox_to_anchor=(1.01, 0.0), frameon=False)
    return first


def plot_deacl(points: pd.DataFrame, style: Style, path: Path, eps: float) -> Path | None:
    """The DeACL figure: a panel per (task, data set); x = fine-tuning epoch (0 = teacher)."""
    if points.empty:
        return None
    panels = list(points.groupby(["task", "dataset"], sort=True))
    fig, extra = Figure(figsize=(7.6, 3.6 * len(panels))), []
    for k, ((task, dataset), sub) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        for (tune, series), line in sub.groupby(["fine_tune", "series"], sort=True):
            line = line.sort_values("epoch")
            colour = style.colour(tune)
            ax.plot(line["epoch"], line["value"], color=colour, linestyle=style.line(series), lw=style.width(series),
                    marker="o", ms=4)
            _band(ax, line["epoch"], line["lo"], line["hi"], colour)
        ax.set(xlabel="DeACL fine-tuning epoch (0 = teacher)", ylabel=_axis_label(task),
               title=f"{dataset} ({task}), attacks at ε = {eps * 255:.3g}/255")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        series = dict(sub[["series", "series_label"]].drop_duplicates().itertuples(index=False))
        extra.append(_legends(ax, {t: style.colour(t) for t in sorted(sub["fine_tune"].unique())}, series, style))
    fig.tight_layout()
    return _save(fig, path, extra)


def plot_losses(frame: pd.DataFrame, curves: dict[int, pd.DataFrame], style: Style, out_dir: Path,
                eps: float) -> list[Path]:
    """Per (task, data set) at ``eps``: ``loss_figure``."""
    at = frame[((frame["eps"] - eps).abs() < EPS_TOL) & frame.index.isin(list(curves))]
    return [_save(loss_figure(sub, curves, style, eps), out_dir / f"loss_{task}_{dataset}.png")
            for (task, dataset), sub in at.groupby(["task", "dataset"], sort=True)]


def loss_figure(sub: pd.DataFrame, curves: dict[int, pd.DataFrame], style: Style, eps: float) -> Figure:
    """Each cell's mean attack loss per gradient step (integer ticks), scaled to its range."""
    task, dataset = sub["task"].iloc[0], sub["dataset"].iloc[0]
    fig = Figure(figsize=(7.2, 3.6))
    ax = fig.add_subplot()
    for i, row in sub.sort_values(["config_label", "attack_label"]).iterrows():
        curve = curves[i].sort_values("step")
        loss = curve["mean_loss"].to_numpy(float)
        span = np.nanmax(loss) - np.nanmin(loss) if np.isfinite(loss).any() else 0.0
        scaled = (loss - np.nanmin(loss)) / span if span > 0 else np.zeros_like(loss)
        ax.plot(curve["step"], scaled, color=style.colour(row["encoder_label"]), linestyle=style.line(row["attack"]),
                lw=1.6, label=f"{row['config_label']} · {row['attack_label']}")
    ax.set(xlabel="gradient step", ylabel="mean attack loss (scaled to its range)",
           title=f"{dataset} ({task}): attack loss at ε = {eps * 255:.3g}/255")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_search(name: str, trials: pd.DataFrame, path: Path, colour: str) -> pd.DataFrame:
    """The search's Pareto front (clean vs EmbedAttack probe accuracy) through ``pareto.plot_pareto``."""
    x, y = "probe/clean_acc", "probe/embed_acc"
    scored = trials.dropna(subset=[x, y])
    teacher_cols = [f"teacher/{x}", f"teacher/{y}"]
    teacher = list(scored[teacher_cols].dropna().itertuples(index=False, name=None)) \
        if set(teacher_cols) <= set(scored) else []
    return plot_pareto(scored, path, x, y, teacher=teacher, title=f"search {name}: Pareto front",
                       color=colour, front_color="#000000")
