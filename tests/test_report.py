"""Tests of dwindle.report: units, shared cells, rich/Markdown/HTML renderers, plots, files."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from dwindle.errors import ConfigError, OutputDirError
from dwindle.report import (
    accuracy_vs_size_plot,
    comparison_cells,
    format_bytes,
    format_count,
    format_energy,
    format_ms,
    format_percent,
    format_ratio,
    latency_vs_size_plot,
    other_metrics,
    print_table,
    rich_table,
    table_cells,
    to_html,
    to_markdown,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def report() -> dict:
    return {
        "title": "LeNet-300 pruning",
        "baseline": "dense",
        "machine": {"cpu": "Test CPU", "threads": 1, "gpu": None},
        "notes": ["Latency interleaved in one process."],
        "stages": [{"prune": {"method": "magnitude", "steps": 4}}],
        "rows": [
            {
                "variant": "dense",
                "metrics": {
                    "accuracy": 0.9841,
                    "test_errors": 159,
                    "params": 266610,
                    "nonzeros": 266610,
                    "flops": 532000,
                    "bytes": 1067050,
                    "artifact": "safetensors",
                    "latency_ms": {
                        "b1": {"p50": 0.05, "p95": 0.07},
                        "b32": {"p50": 0.4, "p95": 0.5},
                    },
                    "peak_mem_bytes": 3 * 2**20,
                    "peak_mem_source": "tracemalloc",
                    "energy_j": 12.3e-6,
                    "energy_source": "codecarbon",
                },
            },
            {
                "variant": "pruned",
                "metrics": {
                    "accuracy": 0.9838,
                    "params": 266610,
                    "nonzeros": 21500,
                    "flops": 266000,
                    "bytes": 120000,
                    "latency_ms": {
                        "b1": {"p50": 0.08, "p95": 0.1},
                        "b32": {"p50": 0.2, "p95": 0.3},
                    },
                    "energy_j": 2e-3,
                    "energy_source": "estimate (FLOPs × J/FLOP)",
                    "sparsity": 0.919,
                },
            },
            {"variant": "empty", "metrics": {"params": None}},
        ],
    }


def _text(report: dict) -> str:
    console = Console(record=True, width=250)
    print_table(report, console=console)
    return console.export_text()


# --- units --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, "0 B"), (512, "512 B"), (1536, "1.5 KiB"), (1067050, "1.02 MiB"), (3 * 2**30, "3 GiB")],
)
def test_format_bytes(value: float, expected: str) -> None:
    assert format_bytes(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(159, "159"), (21500, "21.5K"), (266610, "267K"), (1067050, "1.07M"), (999_999, "1M")],
)
def test_format_count(value: float, expected: str) -> None:
    assert format_count(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.05, "50 µs"), (12.34, "12.3 ms"), (0.9996, "1 ms"), (2500, "2.5 s"), (0.0004, "400 ns")],
)
def test_format_ms(value: float, expected: str) -> None:
    assert format_ms(value) == expected


def test_format_energy_always_names_its_source() -> None:
    assert format_energy(12.3e-6, "codecarbon") == "12.3 µJ (codecarbon)"
    assert format_energy(0.5, "rapl") == "500 mJ (rapl)"
    assert format_energy(2.0) == "2 J (source unknown)"
    assert format_energy(None, "rapl") == "—"


def test_format_ratio_labels_slowdowns_only_when_measured() -> None:
    assert format_ratio(3.953) == "3.95×"
    assert format_ratio(12.43) == "12.4×"
    assert format_ratio(0.62) == "0.62×"
    assert format_ratio(0.62, measured=True) == "0.62× (slower)"
    assert format_ratio(1.5, measured=True) == "1.50×"
    assert format_ratio(None) == "—"


def test_missing_values_render_a_dash() -> None:
    for fmt in (format_bytes, format_count, format_ms, format_percent, format_ratio):
        assert fmt(None) == "—"
    assert format_count("n/a") == "—"  # type: ignore[arg-type]
    assert format_percent(0.9841) == "98.41 %"


# --- shared cells ---------------------------------------------------------------------------


def test_table_cells_one_row_per_variant_with_derived_ratios(report: dict) -> None:
    headers, rows = table_cells(report)
    assert [r[0] for r in rows] == ["dense (baseline)", "pruned", "empty"]
    assert all(len(r) == len(headers) for r in rows)
    pruned = dict(zip(headers, rows[1], strict=True))
    assert pruned["Compression (bytes)"] == "8.89×"  # 1067050 / 120000, from the baseline row
    assert pruned["FLOPs ratio (theory)"] == "2.00×"
    assert pruned["Speed-up b32 (measured)"] == "2.00×"
    assert pruned["Speed-up b1 (measured)"] == "0.62× (slower)"
    assert pruned["Latency b1 p50 / p95"] == "80 µs / 100 µs"
    empty = dict(zip(headers, rows[2], strict=True))
    assert set(list(empty.values())[1:]) == {"—"}


def test_measured_speedup_given_in_metrics_wins_over_derived(report: dict) -> None:
    report["rows"][1]["metrics"]["speedup_b32"] = 0.9
    headers, rows = comparison_cells(report)
    assert dict(zip(headers, rows[1], strict=True))["Speed-up b32 (measured)"] == "0.90× (slower)"


def test_other_metrics_lists_only_extras(report: dict) -> None:
    extras = other_metrics(report)
    assert ("pruned", "sparsity", "0.919") in extras
    assert ("dense", "test_errors", "159") in extras
    assert not any(metric in {"bytes", "latency_ms", "energy_j"} for _, metric, _ in extras)


def test_malformed_report_is_refused_with_a_message() -> None:
    with pytest.raises(ConfigError, match="'rows' list"):
        table_cells({"rows": "nope"})
    with pytest.raises(ConfigError, match=r"report\['rows'\]\[0\] needs a 'variant'"):
        to_markdown({"rows": [{"metrics": {}}]})


# --- rich ---------------------------------------------------------------------------------


def test_rich_table_shows_variants_energy_source_and_slowdown(report: dict) -> None:
    text = _text(report)
    for needle in ("dense", "pruned", "empty", "12.3 µJ", "codecarbon", "0.62× (slower)"):
        assert needle in text
    assert "1.02 MiB" in text and "safetensors" in text
    assert "—" in text


def test_rich_table_styles_slowdown_red_and_prints_markup_literally(report: dict) -> None:
    report["rows"][2]["variant"] = "[bold]odd[/bold]"
    table = rich_table(report)
    # transposed: one row per metric, one column per variant
    metrics = [str(c) for c in table.columns[0].cells]
    row = metrics.index("Speed-up b1 (measured)")
    cells = [list(col.cells)[row] for col in table.columns[1:]]
    assert str(cells[1]) == "0.62× (slower)" and cells[1].style == "red"
    assert cells[0].style == ""
    assert "[bold]odd[/bold]" in _text(report)


# --- markdown / html ------------------------------------------------------------------------


def test_markdown_sections_and_one_line_per_variant(report: dict) -> None:
    md = to_markdown(report, [Path("/somewhere/accuracy_vs_size.png")])
    assert md.startswith("# LeNet-300 pruning\n")
    for section in ("## Results", "## Theoretical vs measured", "## Notes", "## Other metrics"):
        assert section in md
    results = md.split("## Results")[1].split("##")[0]
    table_lines = [line for line in results.splitlines() if line.startswith("|")]
    assert table_lines[0].startswith("| Variant | Accuracy | Params |")
    assert len(table_lines) == 2 + 3  # header, alignment, one per variant
    assert "**0.62× (slower)**" in md
    assert "![accuracy vs size](accuracy_vs_size.png)" in md  # relative link
    assert "cpu: Test CPU · threads: 1 · gpu: none" in md
    assert '1. prune: {"method": "magnitude", "steps": 4}' in md


def test_markdown_escapes_pipes_in_cells(report: dict) -> None:
    report["rows"][0]["variant"] = "a|b"
    report["baseline"] = "a|b"
    assert "| a\\|b (baseline) |" in to_markdown(report)


def test_html_escapes_user_strings_and_embeds_plots(report: dict, tmp_path: Path) -> None:
    report["rows"][2]["variant"] = "<script>alert(1)</script>"
    report["notes"].append("<b>note</b>")
    plot = accuracy_vs_size_plot(report, tmp_path / "accuracy_vs_size.png")
    assert plot is not None
    page = to_html(report, [plot])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;note&lt;/b&gt;" in page
    match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match and base64.b64decode(match.group(1)).startswith(PNG_MAGIC)
    assert '<td class="num slower">0.62× (slower)</td>' in page
    assert "<h2>Theoretical vs measured</h2>" in page


# --- plots ----------------------------------------------------------------------------------


def test_plots_are_pngs_and_skip_variants_without_data(report: dict, tmp_path: Path) -> None:
    acc = accuracy_vs_size_plot(report, tmp_path / "acc.png")
    lat = latency_vs_size_plot(report, tmp_path / "lat.png")
    for path in (acc, lat):
        assert path is not None and path.read_bytes().startswith(PNG_MAGIC)
    assert [p.name for p in tmp_path.iterdir()] != []
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_plots_return_none_without_the_metric(tmp_path: Path) -> None:
    bare = {"rows": [{"variant": "a", "metrics": {"accuracy": 0.9}}], "baseline": None}
    assert accuracy_vs_size_plot(bare, tmp_path / "a.png") is None
    assert latency_vs_size_plot(bare, tmp_path / "l.png") is None
    assert list(tmp_path.iterdir()) == []


def test_import_does_not_load_matplotlib() -> None:
    import subprocess
    import sys

    code = "import sys, dwindle.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


# --- files ----------------------------------------------------------------------------------


def test_write_report_writes_every_file(report: dict, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "demo"
    paths = write_report(report, out)
    assert set(paths) == {"markdown", "html", "metrics", "accuracy_vs_size", "latency_vs_size"}
    assert paths["markdown"] == out / "report.md"
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == report
    assert (out / "latency_vs_size.png").read_bytes().startswith(PNG_MAGIC)
    assert "](latency_vs_size.png)" in (out / "report.md").read_text(encoding="utf-8")
    assert "data:image/png;base64," in (out / "report.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())


def test_write_report_refuses_an_uncreatable_dir(report: dict, tmp_path: Path) -> None:
    blocker = tmp_path / "f.txt"
    blocker.write_text("not a directory")
    target = blocker / "sub"
    with pytest.raises(OutputDirError, match="choose a directory you can write to") as info:
        write_report(report, target)
    assert str(target) in str(info.value)


def test_short_energy_source_keeps_estimate_label() -> None:
    from dwindle.report.table import short_source

    assert short_source("codecarbon (estimate: CPU load × 8 W TDP)") == "codecarbon, estimate"
    assert short_source("estimate: FLOPs × 1e-10 J/FLOP (no power meter)") == "estimate"
    assert short_source("RAPL (powercap, 1 package(s))") == "RAPL"
