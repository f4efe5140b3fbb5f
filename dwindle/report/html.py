"""A measurement report as one self-contained HTML page (inline CSS, plots embedded)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from dwindle.report.markdown import COMPARISON_NOTE
from dwindle.report.table import (
    comparison_cells,
    is_slowdown,
    machine_line,
    other_metrics,
    report_rows,
    report_title,
    stage_lines,
    table_cells,
)

__all__ = ["to_html"]

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 80rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; }
th { background: #f3f3f3; }
td.num { text-align: right; white-space: nowrap; }
tr.baseline { font-weight: bold; background: #fff8e5; }
td.slower { color: #c00; font-weight: bold; }
figure { display: inline-block; margin: 0.5rem; }
figure img { max-width: 100%; }
"""

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    baseline_rows: Sequence[bool] = (),
    left: int = 1,
) -> str:
    """An HTML table; the first ``left`` columns are text, the rest numbers."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            classes = [] if i < left else ["num"]
            if i and is_slowdown(cell):
                classes.append("slower")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{escape(cell)}</td>")
        is_base = r < len(baseline_rows) and baseline_rows[r]
        tr = '<tr class="baseline">' if is_base else "<tr>"
        body.append(f"{tr}{''.join(cells)}</tr>")
    rows_html = "\n".join(body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows_html}\n</tbody>\n</table>"


def _figure(path: str | Path) -> str:
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    mime = _MIME.get(path.suffix.lower(), "application/octet-stream")
    caption = escape(path.stem.replace("_", " "))
    return (
        f'<figure><img alt="{caption}" src="data:{mime};base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def to_html(report: Mapping[str, Any], plot_paths: Sequence[str | Path] = ()) -> str:
    """The Markdown report's sections as HTML; every string from the report is escaped."""
    rows = report_rows(report)
    baseline = report.get("baseline")
    is_base = [name == baseline for name, _ in rows]
    title = escape(report_title(report))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        f'<head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style></head>',
        "<body>",
        f"<h1>{title}</h1>",
        f"<p><strong>Machine:</strong> {escape(machine_line(report))}</p>",
    ]
    if baseline:
        parts.append(f"<p><strong>Baseline:</strong> {escape(str(baseline))}</p>")
    parts += ["<h2>Results</h2>", _table(*table_cells(report), is_base)]
    parts += ["<h2>Theoretical vs measured</h2>", f"<p>{escape(COMPARISON_NOTE)}</p>"]
    parts.append(_table(*comparison_cells(report), is_base))
    if stages := stage_lines(report):
        items = "".join(f"<li>{escape(s)}</li>" for s in stages)
        parts += ["<h2>Stages</h2>", f"<ol>{items}</ol>"]
    if notes := report.get("notes"):
        items = "".join(f"<li>{escape(str(n))}</li>" for n in notes)
        parts += ["<h2>Notes</h2>", f"<ul>{items}</ul>"]
    if others := other_metrics(report):
        parts += ["<h2>Other metrics</h2>", _table(["Variant", "Metric", "Value"], others, left=3)]
    if plot_paths:
        parts += ["<h2>Plots</h2>", *(_figure(p) for p in plot_paths)]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
