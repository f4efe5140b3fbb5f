"""A measurement report as GitHub-flavoured Markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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

__all__ = ["to_markdown"]

COMPARISON_NOTE = (
    "Theoretical ratios come from counts; speed-ups are measured on this machine in the same run "
    "as the baseline. A speed-up below 1× is a slow-down."
)


def _cell(text: str) -> str:
    # A "|" or a line break inside a cell would split the table row.
    return " ".join(text.split()).replace("|", "\\|")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """A Markdown table; the first ``left`` columns are text, the rest numbers (right-aligned)."""
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "|" + "|".join(":---" if i < left else "---:" for i in range(len(headers))) + "|",
    ]
    for row in rows:
        cells = [f"**{_cell(c)}**" if i and is_slowdown(c) else _cell(c) for i, c in enumerate(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(report: Mapping[str, Any], plot_paths: Sequence[str | Path] = ()) -> str:
    """Title, machine, results table, theoretical vs measured, notes, other metrics, plots.

    Plots are linked by file name, so the Markdown sits in the same directory as its images.
    """
    report_rows(report)  # fail on a malformed report before writing anything
    lines = [f"# {_cell(report_title(report))}", "", f"**Machine:** {machine_line(report)}", ""]
    if report.get("baseline"):
        lines += [f"**Baseline:** {_cell(str(report['baseline']))}", ""]
    lines += ["## Results", "", *_table(*table_cells(report)), ""]
    lines += ["## Theoretical vs measured", "", COMPARISON_NOTE, ""]
    lines += [*_table(*comparison_cells(report)), ""]
    if stages := stage_lines(report):
        lines += ["## Stages", "", *(f"{i}. {s}" for i, s in enumerate(stages, 1)), ""]
    if notes := report.get("notes"):
        lines += ["## Notes", "", *(f"- {' '.join(str(n).split())}" for n in notes), ""]
    if others := other_metrics(report):
        table = _table(["Variant", "Metric", "Value"], others, left=3)
        lines += ["## Other metrics", "", *table, ""]
    if plot_paths:
        lines += ["## Plots", ""]
        for plot in plot_paths:
            name = Path(plot).name
            alt = Path(plot).stem.replace("_", " ")
            lines += [f"![{alt}]({name.replace(' ', '%20')})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"
