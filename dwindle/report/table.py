"""Cells of a measurement report in human units, and the rich table drawn from them.

Every renderer (rich, Markdown, HTML) takes its text from :func:`table_cells`,
:func:`comparison_cells` and :func:`other_metrics`, so a figure reads the same wherever it
appears. Ratios the report lacks are derived from the baseline row, which was measured in the
same run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dwindle.errors import ConfigError

__all__ = [
    "DASH",
    "SLOWDOWN_LABEL",
    "accuracy_of",
    "comparison_cells",
    "format_bytes",
    "format_count",
    "format_energy",
    "format_ms",
    "format_percent",
    "format_ratio",
    "is_slowdown",
    "latency_batches",
    "latency_p50",
    "machine_line",
    "other_metrics",
    "report_rows",
    "report_title",
    "stage_lines",
    "table_cells",
]

DASH = "—"
SLOWDOWN_LABEL = "(slower)"

_COUNT_UNITS = (("", 1.0), ("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12))
_BYTE_UNITS = (("B", 1.0), ("KiB", 2.0**10), ("MiB", 2.0**20), ("GiB", 2.0**30), ("TiB", 2.0**40))
_MS_UNITS = (("ns", 1e-6), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3))
_JOULE_UNITS = (("nJ", 1e-9), ("µJ", 1e-6), ("mJ", 1e-3), ("J", 1.0))

# Keys drawn in the main table; everything else goes to "Other metrics".
_MAIN_KEYS = frozenset(
    {
        "accuracy", "spearman", "params", "nonzeros", "nonzeros_ratio", "flops",
        "effective_flops", "bytes", "artifact", "latency_ms", "peak_mem_bytes",
        "peak_mem_source", "energy_j", "energy_source", "compression_rate", "params_ratio",
        "flops_ratio",
    }
)  # fmt: skip
_RATIO_SOURCES = (
    ("compression_rate", "bytes"),
    ("params_ratio", "params"),
    ("nonzeros_ratio", "nonzeros"),
    ("flops_ratio", "flops"),
)


def _number(value: Any) -> float | None:
    """The value as a float, or None when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _digits(value: float) -> str:
    """About three significant digits, no exponent, no trailing zeros: 1.5, 21.5, 267, 1234."""
    if value >= 100:
        return f"{value:.0f}"
    text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return text.rstrip("0").rstrip(".")


def _in_units(value: Any, units: Sequence[tuple[str, float]], sep: str = " ") -> str:
    """``value`` in the largest unit (ascending ``units``) where it still reads at least 1."""
    v = _number(value)
    if v is None:
        return DASH
    if not math.isfinite(v):
        return str(v)
    sign, v = ("-" if v < 0 else ""), abs(v)
    name, factor = next((u for u in units if u[1] == 1.0), units[0])
    for unit, unit_factor in units:
        # Compare the rounded text so 0.9996 ms becomes "1 ms", not "1000 µs".
        if v > 0 and float(_digits(v / unit_factor)) >= 1:
            name, factor = unit, unit_factor
    return f"{sign}{_digits(v / factor)}{sep}{name}"


def format_count(value: float | None) -> str:
    """A count with K/M/G/T suffixes: 532000 → "532K", 1067050 → "1.07M"."""
    return _in_units(value, _COUNT_UNITS, sep="")


def format_bytes(value: float | None) -> str:
    """A size in binary units: 1536 → "1.5 KiB"."""
    return _in_units(value, _BYTE_UNITS)


def format_ms(value: float | None) -> str:
    """A duration given in milliseconds: 0.05 → "50 µs", 12.34 → "12.3 ms"."""
    return _in_units(value, _MS_UNITS)


def format_energy(joules: float | None, source: str | None = None) -> str:
    """Energy with its source, never unlabelled: 12.3e-6, "codecarbon" → "12.3 µJ (codecarbon)"."""
    text = _in_units(joules, _JOULE_UNITS)
    if text == DASH:
        return DASH
    return f"{text} ({short_source(source) if source else 'source unknown'})"


def _energy_source(metrics: Mapping[str, Any]) -> str:
    if metrics.get("energy_j") is None:
        return DASH
    source = metrics.get("energy_source")
    return short_source(source) if source else "source unknown"


def short_source(source: str) -> str:
    """Table-sized energy source: "codecarbon (estimate: load × TDP…)" → "codecarbon, estimate".

    The full label stays in metrics.json and the report's notes.
    """
    head = source.split(" (")[0].split(":")[0].strip()
    if "estimate" in source.lower() and "estimate" not in head.lower():
        head += ", estimate"
    return head


def format_percent(fraction: float | None) -> str:
    """A fraction as a percentage with two decimals: 0.9841 → "98.41 %"."""
    v = _number(fraction)
    return DASH if v is None else f"{v * 100:.2f} %"


def format_ratio(value: float | None, *, measured: bool = False) -> str:
    """A ratio such as 3.95 → "3.95×"; a measured one below 1 is labelled "(slower)"."""
    v = _number(value)
    if v is None:
        return DASH
    if not math.isfinite(v):
        return f"{v}×"
    text = f"{v:.2f}×" if v < 10 else f"{v:.1f}×" if v < 100 else f"{v:.0f}×"
    # A slow-down is a result to show loudly, never to hide behind a small number.
    return f"{text} {SLOWDOWN_LABEL}" if measured and v < 1 else text


def is_slowdown(cell: str) -> bool:
    """True for a measured speed-up cell that reports a slow-down."""
    return cell.endswith(SLOWDOWN_LABEL)


def report_rows(report: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(variant, metrics)`` pairs of a report, checked; raises ConfigError on a bad shape."""
    rows = report.get("rows") if isinstance(report, Mapping) else None
    if not isinstance(rows, list):
        raise ConfigError(
            "A report needs a 'rows' list of {'variant': name, 'metrics': {...}} "
            f"(see BENCHMARKS.md); got {type(rows).__name__}."
        )
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or not isinstance(row.get("variant"), str):
            raise ConfigError(
                f"report['rows'][{i}] needs a 'variant' name (a string); got {row!r}."
            )
        metrics = row.get("metrics") or {}
        if not isinstance(metrics, Mapping):
            raise ConfigError(
                f"report['rows'][{i}]['metrics'] must be a dict of metric name to value; "
                f"got {type(metrics).__name__}."
            )
        out.append((row["variant"], dict(metrics)))
    return out


def report_title(report: Mapping[str, Any]) -> str:
    """The report's title, else its benchmark name, else "dwindle report"."""
    return str(report.get("title") or report.get("benchmark") or "dwindle report")


def machine_line(report: Mapping[str, Any]) -> str:
    """One line describing the machine: "cpu: X · threads: 1 · gpu: none"."""
    machine = report.get("machine")
    if not isinstance(machine, Mapping) or not machine:
        return "machine not recorded"
    return " · ".join(f"{key}: {_plain(value)}" for key, value in machine.items())


def stage_lines(report: Mapping[str, Any]) -> list[str]:
    """One line per recipe stage: "prune: {"method": "magnitude"}"."""
    stages = report.get("stages") or []
    if not isinstance(stages, list):
        stages = [stages]
    lines = []
    for stage in stages:
        if isinstance(stage, Mapping) and len(stage) == 1:
            ((name, options),) = stage.items()
            lines.append(f"{name}: {_plain(options)}")
        else:
            lines.append(_plain(stage))
    return lines


def _plain(value: Any) -> str:
    """A metric or setting not in the main table, as short text."""
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)


def accuracy_of(metrics: Mapping[str, Any]) -> float | None:
    """Accuracy as a fraction, from ``accuracy`` or else ``error_pct``."""
    acc = _number(metrics.get("accuracy"))
    if acc is None and (err := _number(metrics.get("error_pct"))) is not None:
        acc = 1.0 - err / 100.0
    return acc


def _batch_order(batch: str) -> tuple[int, str]:
    digits = batch[1:]
    return (int(digits), batch) if digits.isdigit() else (2**62, batch)


def latency_batches(report: Mapping[str, Any]) -> list[str]:
    """Batch keys ("b1", "b32", ...) with a latency or a speed-up in any row, smallest first."""
    found: set[str] = set()
    for _, metrics in report_rows(report):
        latency = metrics.get("latency_ms")
        if isinstance(latency, Mapping):
            found.update(str(k) for k in latency)
        found.update(k.removeprefix("speedup_") for k in metrics if k.startswith("speedup_b"))
    return sorted(found, key=_batch_order)


def _latency(metrics: Mapping[str, Any], batch: str, stat: str) -> float | None:
    entry = (metrics.get("latency_ms") or {}).get(batch)
    if isinstance(entry, Mapping):
        return _number(entry.get(stat))
    return _number(entry) if stat == "p50" else None  # a bare number is taken as the p50


def latency_p50(metrics: Mapping[str, Any], batch: str) -> float | None:
    """p50 latency in ms at ``batch`` ("b32"), or None."""
    return _latency(metrics, batch, "p50")


def _quotient(numerator: Any, denominator: Any) -> float | None:
    n, d = _number(numerator), _number(denominator)
    return None if n is None or d is None or d <= 0 else n / d


def _with_ratios(report: Mapping[str, Any], batches: Sequence[str]) -> list[tuple[str, dict]]:
    """Rows with missing ratios derived from the baseline row (same run, so comparable)."""
    rows = report_rows(report)
    base = next((m for name, m in rows if name == report.get("baseline")), None)
    if base is None:
        return rows
    out = []
    for name, metrics in rows:
        full = dict(metrics)
        for key, source in _RATIO_SOURCES:
            if full.get(key) is None:
                full[key] = _quotient(base.get(source), metrics.get(source))
        for batch in batches:
            if full.get(f"speedup_{batch}") is None:
                full[f"speedup_{batch}"] = _quotient(
                    latency_p50(base, batch), latency_p50(metrics, batch)
                )
        out.append((name, full))
    return out


_Cell = Callable[[dict[str, Any]], str]


def _with_note(main: str, note: str | None) -> str:
    return main if main == DASH or not note else f"{main} ({note})"


def _main_columns(report: Mapping[str, Any], batches: Sequence[str]) -> list[tuple[str, _Cell]]:
    def eff(m: dict) -> str | None:
        return f"eff. {format_count(m['effective_flops'])}" if m.get("effective_flops") else None

    def spearman(m: dict) -> str:
        return DASH if m.get("spearman") is None else _plain(m["spearman"])

    def nnz(m: dict) -> str | None:
        return format_ratio(m["nonzeros_ratio"]) if m.get("nonzeros_ratio") else None

    cols: list[tuple[str, _Cell]] = [("Accuracy", lambda m: format_percent(accuracy_of(m)))]
    if any(m.get("spearman") is not None for _, m in report_rows(report)):
        cols.append(("Spearman", spearman))
    cols += [
        ("Params", lambda m: format_count(m.get("params"))),
        ("Non-zeros", lambda m: _with_note(format_count(m.get("nonzeros")), nnz(m))),
        ("FLOPs", lambda m: _with_note(format_count(m.get("flops")), eff(m))),
        ("Size on disk", lambda m: format_bytes(m.get("bytes"))),
        ("Artifact format", lambda m: str(m.get("artifact") or DASH)),
    ]
    for b in batches:
        cols.append((f"Latency {b} p50 / p95", lambda m, b=b: _latency_cell(m, b)))
    cols += [
        ("Peak memory", lambda m: format_bytes(m.get("peak_mem_bytes"))),
        ("Energy / sample", lambda m: _in_units(m.get("energy_j"), _JOULE_UNITS)),
        ("Energy source", lambda m: _energy_source(m)),
        ("Compression (bytes)", lambda m: format_ratio(m.get("compression_rate"))),
        ("Params ratio", lambda m: format_ratio(m.get("params_ratio"))),
        ("FLOPs ratio (theory)", lambda m: format_ratio(m.get("flops_ratio"))),
    ]
    for b in batches:
        cols.append((f"Speed-up {b} (measured)", lambda m, b=b: _speedup_cell(m, b)))
    return cols


def _latency_cell(metrics: dict[str, Any], batch: str) -> str:
    p50, p95 = _latency(metrics, batch, "p50"), _latency(metrics, batch, "p95")
    return DASH if p50 is None and p95 is None else f"{format_ms(p50)} / {format_ms(p95)}"


def _speedup_cell(metrics: dict[str, Any], batch: str) -> str:
    return format_ratio(metrics.get(f"speedup_{batch}"), measured=True)


def _variant_cell(name: str, report: Mapping[str, Any]) -> str:
    is_base = name == report.get("baseline") and name.lower() != "baseline"
    return f"{name} (baseline)" if is_base else name


def _cells(
    report: Mapping[str, Any], columns: Sequence[tuple[str, _Cell]], batches: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    headers = ["Variant", *(header for header, _ in columns)]
    rows = [
        [_variant_cell(name, report), *(cell(metrics) for _, cell in columns)]
        for name, metrics in _with_ratios(report, batches)
    ]
    return headers, rows


def table_cells(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and one row of cell strings per variant for the main results table."""
    batches = latency_batches(report)
    return _cells(report, _main_columns(report, batches), batches)


def comparison_cells(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Theoretical ratios beside measured speed-ups, one row per variant."""
    batches = latency_batches(report)
    columns: list[tuple[str, _Cell]] = [
        ("FLOPs ratio (theory)", lambda m: format_ratio(m.get("flops_ratio")))
    ]
    for b in batches:
        columns.append((f"Speed-up {b} (measured)", lambda m, b=b: _speedup_cell(m, b)))
    columns += [
        ("Compression rate (bytes)", lambda m: format_ratio(m.get("compression_rate"))),
        ("Params ratio", lambda m: format_ratio(m.get("params_ratio"))),
        ("Non-zeros ratio", lambda m: format_ratio(m.get("nonzeros_ratio"))),
    ]
    return _cells(report, columns, batches)


def other_metrics(report: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(variant, metric, value)`` for every metric the main table does not show."""
    return [
        (name, key, _plain(value))
        for name, metrics in report_rows(report)
        for key, value in metrics.items()
        if key not in _MAIN_KEYS and not key.startswith("speedup_b")
    ]
