"""Reports of measurements: a rich table, Markdown, HTML, plots and ``metrics.json``.

The input is a report dict in the BENCHMARKS.md row format::

    {"rows": [{"variant": "baseline", "metrics": {"accuracy": 0.98, "bytes": 1067050}}],
     "baseline": "baseline", "machine": {"cpu": "..."}, "notes": [...], "title": "..."}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dwindle.export.atomic import atomic_write_bytes, ensure_dir
from dwindle.report.html import to_html
from dwindle.report.markdown import to_markdown
from dwindle.report.plots import accuracy_vs_size_plot, latency_vs_size_plot
from dwindle.report.table import (
    comparison_cells,
    format_bytes,
    format_count,
    format_energy,
    format_ms,
    format_percent,
    format_ratio,
    other_metrics,
    report_rows,
    table_cells,
)
from dwindle.report.terminal import print_table, rich_table

__all__ = [
    "accuracy_vs_size_plot",
    "comparison_cells",
    "format_bytes",
    "format_count",
    "format_energy",
    "format_ms",
    "format_percent",
    "format_ratio",
    "latency_vs_size_plot",
    "other_metrics",
    "print_table",
    "rich_table",
    "table_cells",
    "to_html",
    "to_markdown",
    "write_report",
]

_PLOTS = (("accuracy_vs_size", accuracy_vs_size_plot), ("latency_vs_size", latency_vs_size_plot))


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``metrics.json`` and the plots into ``out_dir``.

    Every file is written atomically. Returns the paths by name: ``markdown``, ``html``,
    ``metrics`` and, where the report has the data, ``accuracy_vs_size``/``latency_vs_size``.
    Raises :class:`~dwindle.errors.OutputDirError` when ``out_dir`` cannot be created or written.
    """
    report_rows(report)  # a malformed report fails before anything touches the disk
    metrics_json = json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"
    out = Path(out_dir)
    ensure_dir(out)
    paths: dict[str, Path] = {}
    for name, plot in _PLOTS:
        if (written := plot(report, out / f"{name}.png")) is not None:
            paths[name] = written
    plots = list(paths.values())
    paths["markdown"] = atomic_write_bytes(out / "report.md", to_markdown(report, plots).encode())
    paths["html"] = atomic_write_bytes(out / "report.html", to_html(report, plots).encode())
    paths["metrics"] = atomic_write_bytes(out / "metrics.json", metrics_json.encode())
    return paths
