"""``write_report``: every table (CSV + Markdown), every figure (PNG) and one self-contained HTML page."""
from __future__ import annotations

import html
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ssl_robust.report import checks, html as pages, intervals
from ssl_robust.report.artifacts import Source, as_artifacts
from ssl_robust.results import CellArtifacts
from ssl_robust.report.deacl import deacl_points, deacl_tables
from ssl_robust.report.frame import configuration_lines, reference_eps, results_frame, settings_table
from ssl_robust.report.plots import Style, plot_curves, plot_deacl, plot_losses, plot_search
from ssl_robust.report.poster import REFERENCE, compare, configuration_text, load_reference, summary
from ssl_robust.report.tables import Table, curve_table, task_table
from ssl_robust.report.worst_case import worst_case
from ssl_robust.tasks import TASKS

_INTERNAL = ["clean", "adv", "config", "attack_config"]


def _worst_table(worst: pd.DataFrame) -> Table:
    data = pd.DataFrame({"Task": worst["task"], "Dataset": worst["dataset"], "Encoder": worst["config_label"],
                         "ε": [f"{e:.3g}/255" for e in worst["eps_255"]], "Clean": worst["clean"],
                         "Worst case": worst["worst"],
                         "Worst case lo": worst["worst_lo"], "Worst case hi": worst["worst_hi"],
                         "n": ["" if pd.isna(v) else int(v) for v in worst["n"]],
                         "Attacks": worst["attacks"], "Runs": worst["runs"], "Note": worst["note"]})
    return Table("worst_case", "Worst case over attacks at every ε", data)


def _checks_table(frame: pd.DataFrame, fails: dict[int, list[str]]) -> Table:
    rows = frame.loc[list(fails)].sort_values(["task", "dataset", "config_label", "attack_label", "eps"]) \
        if fails else frame.iloc[:0]
    text = ["; ".join(fails[i]) for i in rows.index]
    data = pd.DataFrame({"Task": rows["task"], "Dataset": rows["dataset"], "Configuration": rows["config_label"],
                         "Attack": rows["attack_label"], "ε": [f"{e * 255:.3g}/255" for e in rows["eps"]],
                         "Run": rows.get("run_id", pd.Series("", index=rows.index)),
                         "Failed checks": text, "Failed checks failed": text})
    return Table("checks", "Cells with a failed check", data, footnotes=False)


def _runs_table(frame: pd.DataFrame) -> Table:
    get = lambda c: frame.get(c, pd.Series("", index=frame.index))  # noqa: E731
    data = pd.DataFrame({"Run": get("run_id"), "Cell": get("cell_id"), "Task": frame["task"],
                         "Dataset": frame["dataset"], "Configuration": frame["config_label"],
                         "Attack": frame["attack_label"], "ε": [f"{e * 255:.3g}/255" for e in frame["eps"]],
                         "Started": pd.to_datetime(get("start_time"), unit="ms", errors="coerce")
                         .dt.strftime("%Y-%m-%d %H:%M").fillna("")})
    return Table("runs", "Runs in this report", data.assign(eps=frame["eps"]).sort_values(
        ["Task", "Dataset", "Configuration", "Attack", "eps"]).drop(columns="eps"))


def _search_table(name: str, front: pd.DataFrame) -> Table:
    keep = [c for c in front.columns if c not in ("state", "pareto", "deacl_id") and not c.startswith("teacher/")]
    return Table(f"pareto_{name}", f"Pareto front of search {name}", front[keep].reset_index(drop=True),
                 arrows={"probe/clean_acc": "↑", "probe/embed_acc": "↑"})


@dataclass
class _Analysis:
    """What every section of a report reads: the runs' frame and artifacts, the reference ε, the
    intervals, worst cases, cross-checks and failures, the DeACL points and the colours."""

    frame: pd.DataFrame
    arts: dict[str, CellArtifacts]
    ref: float
    ivals: pd.DataFrame  # per cell: clean_lo, clean_hi, adv_lo, adv_hi
    worst: pd.DataFrame
    cross: pd.DataFrame  # per (cell, check) evaluated
    fails: dict[int, list[str]]
    points: pd.DataFrame
    style: Style
    out_dir: Path


def _analyse(rows: list[dict[str, Any]], out_dir: Path, eps: float | None, artifacts: Source | None,
             deacl_runs: list[dict[str, Any]], searches: Mapping[str, pd.DataFrame]) -> _Analysis:
    frame = results_frame(rows, deacl_runs)
    arts = as_artifacts(artifacts)
    ref = reference_eps(frame, eps)
    ivals = intervals.run_intervals(frame, arts)
    cross = checks.cross_checks(frame, arts)
    points = deacl_points(frame, deacl_runs, ref, ivals)
    style = Style(list(frame["encoder_label"]) + list(points["fine_tune"]) + [f"search {n}" for n in searches])
    return _Analysis(frame, arts, ref, ivals, worst_case(frame, arts), cross, checks.failures(frame, cross), points,
                     style, out_dir)


def write_report(rows: Iterable[dict[str, Any]], out_dir: Path, eps: float | None = None,
                 title: str = "ssl_robust report", cell_ids: Iterable[str] | None = None, *,
                 artifacts: Source | None = None, deacl_runs: list[dict[str, Any]] | None = None,
                 searches: Mapping[str, pd.DataFrame] | None = None, reference: Path | str | None = REFERENCE,
                 source: str = "") -> Path:
    """Write tables (CSV + Markdown), figures (PNG) and ``index.html`` to ``out_dir``; return the page.

    ``artifacts``: ``{run_id: CellArtifacts or its local results folder}``; ``deacl_runs``: the
    DeACL runs' params (``run_id``, ``gamma``, ``dense_weight``, ...); ``searches``: ``{name: trials}``
    (a search's ``trials.csv``). With ``cell_ids``, only those cells' rows are reported.
    """
    rows = list(rows)
    if cell_ids is not None:
        wanted = set(cell_ids)
        rows = [row for row in rows if row.get("cell_id") in wanted]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    searches, deacl_runs = dict(searches or {}), deacl_runs or []
    at = _analyse(rows, out_dir, eps, artifacts, deacl_runs, searches)
    sections = [*_task_sections(at), _worst_section(at), *_poster_section(at, reference, deacl_runs),
                *_deacl_section(at), *_search_sections(at, searches),
                ("checks", "Checks", _checks_section(at.frame, at.cross, at.fails, out_dir)), _runs_section(at)]
    curve_table(at.frame, at.ivals).to_csv(out_dir / "curves.csv", index=False)
    at.frame.drop(columns=_INTERNAL).to_csv(out_dir / "cells.csv", index=False)
    page = out_dir / "index.html"
    page.write_text(pages.page(title, sections, _intro(at.frame, at.ref, source, out_dir)))
    return page


Section = tuple[str, str, str]  # (anchor, heading, inner HTML)


def _task_sections(at: _Analysis) -> list[Section]:
    """Per task: its table, then per data set the score-vs-ε figure, the loss curves and examples."""
    frame, out_dir = at.frame, at.out_dir
    curve_pngs = {p.stem: p for p in plot_curves(frame, at.ivals, at.worst, at.style, out_dir)}
    curves_ = {i: a.loss_curve for i, a in ((i, at.arts.get(str(r))) for i, r in frame.get("run_id", pd.Series(
        dtype=str)).items()) if a is not None and a.loss_curve is not None and len(a.loss_curve)}
    loss_pngs = {p.stem: p for p in plot_losses(frame, curves_, at.style, out_dir, at.ref)}
    sections = []
    for task in TASKS.names():
        table = task_table(frame, task, at.ref, at.ivals, at.worst, at.fails)
        if table is None:
            continue
        pages.write_table(table, out_dir)
        inner = [pages.table_html(table)]
        for dataset in sorted(frame.loc[frame["task"] == task, "dataset"].unique()):
            if f"{task}_{dataset}" in curve_pngs:
                inner.append(pages.image(curve_pngs[f"{task}_{dataset}"], f"{dataset} ({task}): attacked score vs ε; "
                                         "error bars = 95 % intervals, wide translucent line = worst case over "
                                         "attacks (dotted: its interval); at a single ε, bars"))
            if f"loss_{task}_{dataset}" in loss_pngs:
                inner.append(pages.image(loss_pngs[f"loss_{task}_{dataset}"],
                                         f"{dataset} ({task}): attack loss per gradient step"))
            example = _example(frame, at.arts, task, dataset, at.ref, out_dir)
            if example is not None:
                inner.append(pages.image(*example))
        sections.append((task, f"{task.capitalize()} (ε = {at.ref * 255:.3g}/255)", "".join(inner)))
    return sections


def _worst_section(at: _Analysis) -> Section:
    worst_t = _worst_table(at.worst)
    pages.write_table(worst_t, at.out_dir)
    return ("worst", "Worst case over attacks", pages.paragraph(_WORST_TEXT) +
            f"<details><summary>{html.escape(worst_t.title)}</summary>{pages.table_html(worst_t)}</details>")


def _poster_section(at: _Analysis, reference: Path | str | None, deacl_runs: list[dict[str, Any]]) -> list[Section]:
    """The runs in the poster's configuration next to its numbers; one line when none is."""
    reference_rows = load_reference(reference)
    compared = compare(at.frame, reference_rows, at.ivals, deacl_runs)
    if not compared:
        return []
    inner = []
    for table in compared.values():
        pages.write_table(table, at.out_dir)
        if len(table.data):
            inner += [f"<h3>{html.escape(table.title)}</h3>", pages.paragraph(summary(table), "note"),
                      pages.table_html(table)]
    if not inner:  # one line for the whole section, not an empty table per task
        left_out = sum(table.data.attrs.get("left_out", 0) for table in compared.values())
        other = f"; {left_out} attack run(s) on its encoders and data sets have other settings" if left_out else ""
        inner = [pages.paragraph(f"No run of this report is in the poster's configuration "
                                 f"({configuration_text(reference_rows)}){other}.", "note")]
    return [("poster", "Compared with the poster", pages.paragraph(_POSTER_TEXT) + "".join(inner))]


def _deacl_section(at: _Analysis) -> list[Section]:
    if at.points.empty:
        return []
    at.points.to_csv(at.out_dir / "deacl_points.csv", index=False)
    inner = [pages.image(plot_deacl(at.points, at.style, at.out_dir / "deacl.png", at.ref),
                         "Clean and attacked scores against DeACL fine-tuning epoch")]
    for table in deacl_tables(at.points, at.ref):
        pages.write_table(table, at.out_dir)
        inner += [f"<h3>{html.escape(table.title)}</h3>", pages.table_html(table)]
    return [("deacl", "DeACL fine-tuning", "".join(inner))]


def _search_sections(at: _Analysis, searches: Mapping[str, pd.DataFrame]) -> list[Section]:
    sections = []
    for name, trials in searches.items():
        png = at.out_dir / f"pareto_{name}.png"
        front = plot_search(name, trials, png, at.style.colour(f"search {name}"))
        table = _search_table(name, front)
        pages.write_table(table, at.out_dir)
        sections.append((f"search-{name}", f"DeACL search {name}: Pareto front",
                         pages.image(png, f"search {name}: clean vs EmbedAttack probe accuracy") +
                         pages.table_html(table)))
    return sections


def _runs_section(at: _Analysis) -> Section:
    runs = _runs_table(at.frame)
    pages.write_table(runs, at.out_dir)
    inner = f"<details><summary>{len(at.frame)} runs</summary>{pages.table_html(runs)}</details>"
    if at.frame.attrs["duplicates"]:
        inner += "<h3>Duplicate runs left out</h3><ul>" + "".join(
            f"<li>{html.escape(note)}</li>" for note in at.frame.attrs["duplicates"]) + "</ul>"
    return ("runs", "Runs", inner)


_WORST_TEXT = ("Per test item, the worst outcome over every attack run at that ε for the configuration: "
               "classification counts an item as robust only if every attack failed on it; depth takes each "
               "image's highest RMSE; segmentation chooses one attack per image so that the mIoU recomputed from "
               "the chosen images' per-class intersections and unions is as low as a local search finds, starting "
               "from the attack with the lowest mIoU of its own, so the worst case is never above any attack's "
               "own score. Empty where an attack's per-sample results are missing.")
_POSTER_TEXT = ("The poster's published numbers (dashboards/reference/poster.csv) beside ours, only for runs in the "
                "poster's configuration: the same encoder at the poster's input size (224 px for DINO ViT-B/16, "
                "518 px for DINOv2), data set, attack, ε = 8/255 and the poster's 20 steps of 2/255; DeACL rows are "
                "the poster's DeACL model, its released checkpoint or the last-epoch student of a DeACL run with the "
                "poster's recipe (ImageNet, ε = 4/255, γ = 2: sweeps/deacl_poster.yaml), named in the Origin column. "
                "Δ = ours − poster.")


def _example(frame: pd.DataFrame, arts: dict[str, Any], task: str, dataset: str, ref: float,
             out_dir: Path) -> tuple[Path, str] | None:
    """The example figure of the task's own attack (else any attack) on the data set at the report's
    eps, copied next to the page, with its caption; None if no such cell logged one."""
    at = frame[(frame["task"] == task) & (frame["dataset"] == dataset) & ((frame["eps"] - ref).abs() < 1e-6)]
    own = TASKS.get(task).own_attack
    for _, row in sorted(at.iterrows(), key=lambda item: item[1]["attack"] != own):
        art = arts.get(str(row.get("run_id", "")))
        if art is not None and art.examples is not None:
            path = out_dir / f"examples_{task}_{dataset}.png"
            shutil.copyfile(art.examples, path)
            return path, (f"{dataset} ({task}): the first test images clean, their perturbation and attacked by "
                          f"{row['attack_label']} at ε = {ref * 255:.3g}/255 ({row['config_label']}), with what the "
                          "model predicted for each")
    return None


def _intro(frame: pd.DataFrame, ref: float, source: str, out_dir: Path) -> str:
    swept = ", ".join(f"{e * 255:.3g}" for e in sorted(frame["eps"].unique()))
    lines = [f"{source} · " if source else "",
             f"{len(frame)} attack runs; tables at ε = {ref * 255:.3g}/255, curves over ε × 255 ∈ {{{swept}}}. "
             f"Generated {time.strftime('%Y-%m-%d %H:%M')}."]
    out = pages.paragraph("".join(lines), "meta")
    out += pages.paragraph(f"[lo, hi] is the {intervals.LEVEL:.0%} interval: Wilson for accuracy, a "
                           f"percentile bootstrap over images ({intervals.RESAMPLES} resamples, seed "
                           f"{intervals.SEED}) for mIoU and RMSE; the CSV files carry both bounds. ↑ / ↓ mark the "
                           "better direction; red cells (✗) failed a check, listed under Checks.", "meta")
    settings = Table("settings", "Settings shared by every run", settings_table(frame), footnotes=False)
    pages.write_table(settings, out_dir)
    return (out + f"<h3>{html.escape(settings.title)}</h3>" + pages.table_html(settings)
            + "".join(pages.paragraph(line, "meta") for line in configuration_lines(frame)))


def _checks_section(frame: pd.DataFrame, cross: pd.DataFrame, fails: dict[int, list[str]], out_dir: Path) -> str:
    table = _checks_table(frame, fails)
    pages.write_table(table, out_dir)
    cross.assign(run_id=[frame.at[i, "run_id"] if "run_id" in frame else "" for i in cross["cell"]]) \
        .to_csv(out_dir / "cross_checks.csv", index=False)
    counts = cross.groupby("check")["passed"].agg(["size", "sum"]) if len(cross) else pd.DataFrame()
    items = [f"<li><code>{html.escape(name)}</code>: {html.escape(rule)} — "
             + (f"{int(counts.at[name, 'sum'])} of {int(counts.at[name, 'size'])} passed" if name in counts.index
                else "not evaluated (no cells it applies to)") + "</li>" for name, rule in checks.RULES.items()]
    head = (f'<p class="fail-text">{len(fails)} of {len(frame)} cells failed a check.</p>' if fails else
            f'<p class="ok-text">All {len(frame)} cells passed every check.</p>')
    if checks.short_attacks_only(cross):
        head += pages.paragraph(f"Every failure of cross/loss_levelled is an attack of fewer than {checks.SHORT_ATTACK} "
                                "steps: too short for its loss to level off, as expected of a quick demo grid. Its "
                                "scores show what that budget finds; a longer attack (attack.steps) would likely do "
                                "more damage.", "note")
    per_cell = ", ".join(checks.cell_checks(frame)) or "(none logged)"
    return (head + f"<p>Per-cell checks (logged with each cell, 1 = holds): <code>{html.escape(per_cell)}</code>.</p>"
            + f"<p>Across cells:</p><ul>{''.join(items)}</ul>" + (pages.table_html(table) if fails else ""))
