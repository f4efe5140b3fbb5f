"""Accuracy-vs-size and latency-vs-size scatter plots, written as PNG files atomically.

matplotlib is imported inside the functions, and only its object API is used (no pyplot), so
``import dwindle`` stays fast and plotting leaves no global state behind.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dwindle.export.atomic import atomic_write_bytes
from dwindle.report.table import (
    _number,
    accuracy_of,
    format_bytes,
    latency_batches,
    latency_p50,
    report_rows,
    report_title,
)

__all__ = ["accuracy_vs_size_plot", "latency_vs_size_plot"]


def _scatter(
    points: Sequence[tuple[str, float, float]],
    baseline: str | None,
    path: Path,
    title: str,
    ylabel: str,
) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, x, y in points:
        is_base = name == baseline
        ax.scatter(
            [x],
            [y],
            s=140 if is_base else 40,
            marker="*" if is_base else "o",
            color="tab:red" if is_base else "tab:blue",
            zorder=3,
        )
        label = f"{name} (baseline)" if is_base and name.lower() != "baseline" else name
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    # Base-2 ticks land on round binary sizes (64 KiB, 1 MiB), matching format_bytes.
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(x for _, x, _ in points), max(x for _, x, _ in points)
    # Pad in log space (more on the right, where labels run) and by at least 1.6× each side,
    # so the axis always spans a power of two and shows a tick.
    span = math.log(hi / lo)
    ax.set_xlim(lo / max(1.6, math.exp(0.05 * span)), hi * max(1.6, math.exp(0.15 * span)))
    ax.set_xlabel("Size on disk (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(Path(path), buffer.getvalue())


def accuracy_vs_size_plot(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Accuracy (%) against bytes on disk, one labelled point per variant; None if no data."""
    points = []
    for name, metrics in report_rows(report):
        size, acc = _number(metrics.get("bytes")), accuracy_of(metrics)
        if size is not None and size > 0 and acc is not None:
            points.append((name, size, acc * 100.0))
    if not points:
        return None
    title = f"{report_title(report)}: accuracy vs size"
    return _scatter(points, report.get("baseline"), Path(path), title, "Accuracy (%)")


def latency_vs_size_plot(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """p50 latency at the largest batch size present against bytes; None if no data."""
    rows = report_rows(report)
    for batch in reversed(latency_batches(report)):
        points = [
            (name, float(metrics["bytes"]), p50)
            for name, metrics in rows
            if (_number(metrics.get("bytes")) or 0) > 0
            and (p50 := latency_p50(metrics, batch)) is not None
        ]
        if points:
            title = f"{report_title(report)}: latency vs size"
            ylabel = f"p50 latency at batch {batch.removeprefix('b')} (ms)"
            return _scatter(points, report.get("baseline"), Path(path), title, ylabel)
    return None
