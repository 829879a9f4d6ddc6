"""Tables as HTML and Markdown, and the one self-contained page (inline CSS, images inlined as
base64 PNG data: it opens offline, moved or mailed, without a CDN or any other file)."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from ssl_robust.report.intervals import text
from ssl_robust.report.tables import Table

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
main{max-width:1280px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}
h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #e3e6eb;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}p,li{max-width:100ch}.meta{color:#555;font-size:14px}
nav{font-size:14px;margin:10px 0 18px}nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 6px;font-size:13.5px}
th,td{padding:5px 10px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}td.fail,tr td.fail{background:#fde2e1;color:#a4161a;font-weight:600}
.fail-text{color:#a4161a;font-weight:600}.ok-text{color:#1b7f3b;font-weight:600}
.better{color:#1b7f3b}.note{color:#555;font-size:13px;margin:2px 0 12px}
figure{margin:14px 0 22px}figure img{max-width:100%;border:1px solid #e3e6eb}figcaption{font-size:13px;color:#555}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}code{font-size:12.5px;background:#f1f3f6;padding:0 3px}
"""


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell_text(table: Table, row: dict[str, Any], column: str) -> str:
    """The shown text of one cell: scores with their interval, signed differences, blank for NaN."""
    value = row[column]
    if column in table.signed:
        return "" if _is_nan(value) else f"{value:+.2f}"
    if isinstance(value, float):
        lo, hi = row.get(f"{column} lo", float("nan")), row.get(f"{column} hi", float("nan"))
        return text(float(value), float(lo), float(hi))
    return "" if _is_nan(value) else str(value)


def failed(row: dict[str, Any], column: str) -> str:
    value = row.get(f"{column} failed", "")
    return "" if _is_nan(value) else str(value)


def header(table: Table, column: str) -> str:
    arrow = table.arrows.get(column)
    return f"{column} {arrow}" if arrow else column


def table_html(table: Table) -> str:
    columns = table.shown
    head = "".join(f"<th>{html.escape(header(table, c))}</th>" for c in columns)
    body = []
    for row in table.data.to_dict("records"):
        cells = []
        for c in columns:
            shown, bad = html.escape(cell_text(table, row, c)), failed(row, c)
            numeric = isinstance(row[c], float) or c in table.arrows
            classes = " ".join(k for k, on in (("num", numeric), ("fail", bool(bad))) if on)
            attrs = (f' class="{classes}"' if classes else "") + (f' title="{html.escape(bad)}"' if bad else "")
            cells.append(f"<td{attrs}>{shown}{' ✗' if bad else ''}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def table_markdown(table: Table) -> str:
    columns = table.shown
    escape = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = [f"### {table.title}", "", "| " + " | ".join(escape(header(table, c)) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in table.data.to_dict("records"):
        lines.append("| " + " | ".join(escape(cell_text(table, row, c) + (" ✗" if failed(row, c) else ""))
                                       for c in columns) + " |")
    flagged = [f"{row.get('Encoder', '')} · {c}: {failed(row, c)}" for row in table.data.to_dict("records")
               for c in columns if failed(row, c)] if table.footnotes else []
    if flagged:
        lines += ["", "✗ failed checks:"] + [f"- {escape(f)}" for f in flagged]
    return "\n".join(lines + ([""] + [table.note] if table.note else []) + [""])


def write_table(table: Table, out_dir: Path) -> None:
    """``<stem>.csv`` (every column, bounds included) and ``<stem>.md``."""
    table.data.to_csv(out_dir / f"{table.stem}.csv", index=False)
    (out_dir / f"{table.stem}.md").write_text(table_markdown(table))


def image(path: Path, caption: str) -> str:
    data, name = base64.b64encode(Path(path).read_bytes()).decode(), html.escape(Path(path).name)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f'<figcaption>{html.escape(caption)} (<a href="{name}">{name}</a>)</figcaption></figure>')


def paragraph(line: str, cls: str = "") -> str:
    return f"<p{f' class={chr(34)}{cls}{chr(34)}' if cls else ''}>{html.escape(line)}</p>"


def page(title: str, sections: list[tuple[str, str, str]], intro: str) -> str:
    """``sections``: (anchor, heading, inner HTML)."""
    nav = "".join(f'<a href="#{a}">{html.escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{inner}</section>' for a, h, inner in sections)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body><main><h1>{html.escape(title)}</h1>{intro}<nav>{nav}</nav>{body}</main></body></html>")
