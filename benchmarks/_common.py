"""Shared plumbing of the benchmark scripts: result files in the ../shared/BENCHMARKS.md format."""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dwindle", "benchmarks/*.py"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# CPU features that change which int8/bf16 kernels run (the same "AMD EPYC" name has come
# both with and without VNNI here, and int8 speed-ups differ about 2x between the two).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())  # the first CPU's
    except OSError:
        pass
    cpu = fields.get("model name", cpu)
    present = set(fields.get("flags", "").split())
    flags = [f for f in ISA_FLAGS if f in present]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "isa": flags, "threads": torch.get_num_threads(), "gpu": gpu}


def packages(names: Sequence[str] = ("torch", "dwindle", "numpy")) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


LATENCY_COLUMNS: list[tuple[str, str]] = [
    ("p50 b1 ms", "metrics.latency_ms.b1.p50"),
    ("speed-up b1", "metrics.speedup_b1"),
    ("p50 b32 ms", "metrics.latency_ms.b32.p50"),
    ("speed-up b32", "metrics.speedup_b32"),
]
"""Measured latency at batch 1 and 32 with the speed-up over the baseline, for tables."""


def torch_pruning_l1(
    model: torch.nn.Module,
    example: torch.Tensor,
    ratio: float,
    ignored: Sequence[torch.nn.Module] = (),
) -> torch.nn.Module:
    """The peer: Torch-Pruning's own pruner (MagnitudePruner is MetaPruner in 1.6) with L1
    magnitude importance, one shot, on a copy of ``model``; ``ignored`` are modules of
    ``model`` (mapped to the copy by name)."""
    import copy

    import torch_pruning as tp

    peer = copy.deepcopy(model).eval()
    names = {id(m): n for n, m in model.named_modules()}
    pruner = tp.pruner.MetaPruner(
        peer,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[peer.get_submodule(names[id(m)]) for m in ignored],
    )
    pruner.step()
    return peer


def flag_slower(rows: list[dict[str, Any]], baseline: str) -> str:
    """Mark every row measured slower than ``baseline`` despite fewer FLOPs (metrics
    ``slower_despite_fewer_flops``) and return the note listing them."""
    slow = []
    for row in rows:
        if row["variant"] == baseline:
            continue
        m = row["metrics"]
        m["slower_despite_fewer_flops"] = {
            f"b{b}": bool(m["flops_ratio"] > 1 and m[f"speedup_b{b}"] < 1) for b in (1, 32)
        }
        slow += [f"{row['variant']} ({k})" for k, v in m["slower_despite_fewer_flops"].items() if v]
    return "slower than the baseline despite fewer FLOPs: " + (", ".join(slow) or "none")


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    targets: dict[str, dict[str, str]],
    *,
    columns: Sequence[tuple[str, str]],
    notes: Sequence[str] = (),
    extra_packages: Sequence[str] = (),
) -> Path:
    """Write ``results/<name>.json`` and the generated ``results/<name>.md`` table.

    A smoke run's file (``<name>`` ending in ``_smoke``, a few images) declares no targets: the
    scoreboard reads every result file, and a smoke row is never a benchmark's candidate."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    if name.endswith("_smoke"):
        targets = {}
    doc = {
        "benchmark": name,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "command": "python " + " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "machine": machine(),
        "packages": packages(("torch", "dwindle", "numpy", *extra_packages)),
        "rows": rows,
        "targets": targets,
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    md = RESULTS / f"{name}.md"
    md.write_text(render_markdown(doc, columns, notes))
    return path


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _get(row: dict[str, Any], key: str) -> Any:
    """``metrics.a.b`` or ``paper.x`` style lookup into a row."""
    node: Any = row
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def render_markdown(
    doc: dict[str, Any], columns: Sequence[tuple[str, str]], notes: Sequence[str] = ()
) -> str:
    """A Markdown table generated from the JSON (never typed by hand)."""
    head = ["variant", "model", "dataset", *(label for label, _ in columns)]
    lines = [
        f"# {doc['benchmark']}",
        "",
        f"Generated by `{doc['command']}` at commit `{doc['commit']}` on {doc['created']}.",
        f"Machine: {doc['machine']['cpu']}"
        + (f" ({' '.join(doc['machine']['isa'])})" if doc["machine"].get("isa") else "")
        + f", {doc['machine']['threads']} threads"
        + (f"; GPU: {doc['machine']['gpu']}" if doc["machine"].get("gpu") else "")
        + "; "
        f"packages: {', '.join(f'{k} {v}' for k, v in doc['packages'].items())}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in doc["rows"]:
        cells = [row.get("variant"), row.get("model"), row.get("dataset")]
        cells += [_get(row, key) for _, key in columns]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def result_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on result ``name`` while its rows are merged and written, so runs
    of one script writing the same file at the same time (several variants on one GPU) lose no
    row."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def previous_result(name: str) -> dict[str, Any]:
    """Result ``name`` as its JSON holds it now, so a partial run (``--only``) can keep the
    rows and targets it did not redo; no file yet: no rows, no targets."""
    path = RESULTS / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    return {"rows": [], "targets": {}, **old}


def previous_rows(name: str) -> list[dict[str, Any]]:
    """The rows result ``name`` holds now (none when it has no file yet)."""
    return previous_result(name)["rows"]
