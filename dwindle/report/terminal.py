"""The results table in a terminal (rich): one column per variant, split to fit the width."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dwindle.report.table import is_slowdown, machine_line, report_rows, report_title, table_cells

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["print_table", "rich_table"]


def rich_table(report: Mapping[str, Any], variants: Sequence[int] | None = None) -> Table:
    """The main results table as a :class:`rich.table.Table`; slow-downs in red.

    ``variants``: indices of the variants to show (default all), for splitting a wide report.
    """
    from rich.table import Table
    from rich.text import Text

    headers, rows = table_cells(report)
    names = [name for name, _ in report_rows(report)]
    keep = list(range(len(rows))) if variants is None else list(variants)
    # Transposed (one column per variant, one row per metric): a terminal fits a handful of
    # variants side by side, never fifteen metric columns.
    table = Table(title=report_title(report), caption=machine_line(report))
    table.add_column("Metric", justify="left", style="bold", no_wrap=True)
    baseline = report.get("baseline")
    for k in keep:
        # Text, not markup strings: a variant named "[bold]" must print as typed.
        style = "bold" if names[k] == baseline else ""
        table.add_column(Text(rows[k][0]), justify="right", header_style=style)
    for i, header in enumerate(headers[1:], start=1):
        cells = [rows[k][i] for k in keep]
        table.add_row(header, *[Text(c, style="red" if is_slowdown(c) else "") for c in cells])
    return table


def print_table(report: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the results, in several tables of a few variants each when the console is narrow."""
    if console is None:
        from rich.console import Console

        console = Console()
    headers, rows = table_cells(report)
    label = max(len(h) for h in headers[1:]) + 4
    widest = max((len(c) for row in rows for c in row), default=8) + 3
    per_table = max(1, (console.width - label) // max(widest, 12))
    for start in range(0, max(len(rows), 1), per_table):
        console.print(rich_table(report, range(start, min(start + per_table, len(rows)))))
