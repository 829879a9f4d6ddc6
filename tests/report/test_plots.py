"""The report's figures carry information (``ssl_robust.report.plots``): bars at a single ε, attack
lines drawn over the worst case, integer step ticks on loss curves, one colour per encoder and one
line style per attack."""
from __future__ import annotations

from pathlib import Path

from matplotlib.container import BarContainer, ErrorbarContainer

from ssl_robust.attacks import ATTACKS
from ssl_robust.report import CellArtifacts, results_frame
from ssl_robust.report.intervals import run_intervals
from ssl_robust.report.plots import Style, curve_figure, loss_figure
from ssl_robust.report.worst_case import worst_case
from tests.report.fake import Cells, sweep


def _figure(cells: Cells, task: str = "classification"):
    frame = results_frame(cells.rows)
    arts = {k: CellArtifacts.load(v) for k, v in cells.artifacts.items()}
    points = frame.join(run_intervals(frame, arts))
    worst = worst_case(frame, arts)
    sub = points[points["task"] == task]
    return curve_figure(sub, worst[worst["task"] == task].dropna(subset=["worst"]), Style(frame["encoder_label"]))


def test_a_single_eps_is_drawn_as_bars_with_the_worst_case(tmp_path: Path) -> None:
    cells = Cells(tmp_path)
    for attack in ("embed", "pgd", "noise"):
        cells.add("dinov2_vits14", "cifar10", "classification", attack, 8 / 255, 0.9, 0.3, n=20)
    ax = _figure(cells).axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == 3 + 1  # each attack and the worst case over them
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1].endswith("worst case over attacks") and "8/255" in ax.get_title()


def test_attack_lines_are_drawn_over_the_worst_case_with_ticks_at_the_swept_eps(tmp_path: Path) -> None:
    ax = _figure(sweep(tmp_path, n=20)).axes[0]
    worst = [line for line in ax.get_lines() if "worst case" in line.get_label()]
    attacks = [c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert worst and attacks and max(w.get_zorder() for w in worst) < min(a.get_zorder() for a in attacks)
    assert all(w.get_alpha() < 1 for w in worst)  # translucent: the attack lines under it stay visible
    assert list(ax.get_xticks()) == [0.0, 4.0, 8.0]


def test_loss_curves_have_integer_step_ticks(tmp_path: Path) -> None:
    cells = sweep(tmp_path / "runs", n=10, special={("dinov2_vits14", "classification", "pgd", 8): {"loss": [0.1, 0.4, 0.5]}})
    frame = results_frame(cells.rows)
    arts = {k: CellArtifacts.load(v) for k, v in cells.artifacts.items()}
    curves = {i: arts[str(r["run_id"])].loss_curve for i, r in frame.iterrows()}
    at = frame[(frame["task"] == "classification") & ((frame["eps"] - 8 / 255).abs() < 1e-6) & (frame["attack"] == "pgd")]
    ax = loss_figure(at, curves, Style(frame["encoder_label"]), 8 / 255).axes[0]
    ax.set_xlim(1, 3)
    ticks = ax.xaxis.get_major_locator()()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)


def test_one_colour_per_encoder_and_one_line_style_per_attack() -> None:
    style = Style(["b", "a", "c", "a"])
    assert len(set(style.colours.values())) == 3 and style.colour("a") == Style(["a", "c", "b"]).colour("a")
    series = ["clean", "worst", *ATTACKS.names()]
    looks = {(str(style.line(s)), style.width(s)) for s in series}
    assert len(looks) == len(series)
