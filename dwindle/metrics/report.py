"""measure / compare: every metric of one or several models, measured in one process run."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from dwindle._version import __version__
from dwindle.config import Config, validate_config
from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError
from dwindle.export.atomic import atomic_write_bytes
from dwindle.metrics._model import model_device
from dwindle.metrics.accuracy import evaluate_accuracy
from dwindle.metrics.counts import count_nonzeros, count_params
from dwindle.metrics.energy import measure_energy
from dwindle.metrics.flops import count_flops, effective_flops
from dwindle.metrics.latency import fixed_threads, measure_latency
from dwindle.metrics.memory import peak_memory
from dwindle.metrics.significance import mcnemar
from dwindle.metrics.size import artifact_bytes

__all__ = ["MeasureConfig", "Report", "compare", "machine_info", "measure"]

# Ratio name -> metric it compares; each is "baseline / variant", so > 1 means better.
_RATIOS = {
    "compression_rate": "bytes",
    "params_ratio": "params",
    "nonzeros_ratio": "nonzeros",
    "flops_ratio": "flops",
    "effective_flops_ratio": "effective_flops",
}


class MeasureConfig(Config):
    """What :func:`measure` / :func:`compare` measure and how (latency runs, energy source...)."""

    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field((1, 32), min_length=1)
    warmup: int = Field(5, ge=0)
    runs: int = Field(30, ge=1)
    threads: int | None = Field(None, ge=1)
    energy: Literal["auto", "nvml", "rapl", "codecarbon", "estimate", "off"] = "auto"
    energy_seconds: float = Field(2.0, gt=0)
    accuracy: bool = True
    split: str = "test"
    memory: bool = True

    @field_validator("energy", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare ``energy: off`` as ``False``: take it as ``"off"``."""
        return "off" if value is False else value


@dataclass
class Report:
    """Rows of metrics (BENCHMARKS.md names), the machine they were taken on, and remarks."""

    rows: list[dict[str, Any]]
    baseline: str | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: ``baseline``, ``machine``, ``rows``, ``notes``."""
        return {
            "baseline": self.baseline,
            "machine": dict(self.machine),
            "rows": [dict(r) for r in self.rows],
            "notes": list(self.notes),
        }

    def save_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        return atomic_write_bytes(path, text.encode("utf-8"))

    def row(self, name: str) -> dict[str, Any]:
        """The row ``{"variant": name, "metrics": {...}}`` of variant ``name``."""
        for r in self.rows:
            if r["variant"] == name:
                return r
        known = ", ".join(r["variant"] for r in self.rows)
        raise ConfigError(f"no variant {name!r} in this report; variants: {known}")

    def metrics(self, name: str) -> dict[str, Any]:
        """The metrics dict of variant ``name``."""
        return self.row(name)["metrics"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """CPU model, torch thread count, torch/dwindle versions and GPU name (None without one)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": _cpu_name(),
        "threads": threads or torch.get_num_threads(),
        "gpu": gpu,
        "torch": torch.__version__,
        "dwindle": __version__,
    }


def _input_maker(
    data: DataBundle | None, example_input: torch.Tensor | None
) -> Callable[[int], torch.Tensor]:
    if example_input is not None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
            raise ConfigError(
                "example_input must be a tensor with a batch dimension first, e.g. "
                f"torch.randn(1, 1, 28, 28); got {type(example_input).__name__}"
            )
        one = example_input[:1]
        return lambda b: one.repeat(b, *([1] * (one.dim() - 1)))
    if data is not None:
        return data.example_input
    raise ConfigError(
        "nothing to feed the model: pass data=<DataBundle> (e.g. dwindle.data.load('mnist')) "
        "or example_input=<a batch-1 tensor shaped like one input, e.g. torch.randn(1, 784)>"
    )


def _static_metrics(
    model: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    data: DataBundle | None,
    cfg: MeasureConfig,
) -> dict[str, Any]:
    """Everything but latency (measured for all models together) and the ratios."""
    m: dict[str, Any] = {}
    if data is not None and cfg.accuracy:
        task = getattr(data, "task_metrics", None)  # e.g. STS-B Spearman for text encoders
        if callable(task):
            m.update(task(model, cfg.split))
        else:
            device = model_device(model)
            m.update(evaluate_accuracy(model, data, cfg.split, device=device, return_correct=True))
    one = make_input(1)
    m["params"] = count_params(model)
    m["nonzeros"] = count_nonzeros(model)
    m["flops"] = count_flops(model, one)
    m["effective_flops"] = effective_flops(model, one)
    m["bytes"], m["artifact"] = artifact_bytes(model)
    return m


def _add_ratios(rows: dict[str, dict[str, Any]], baseline: str, batch_sizes: tuple[int, ...]):
    base = rows[baseline]
    for name, m in rows.items():
        if name == baseline:
            continue
        for ratio, key in _RATIOS.items():
            if base.get(key) and m.get(key):
                m[ratio] = base[key] / m[key]
        for b in batch_sizes:
            tb, tm = base["latency_ms"][f"b{b}"]["p50"], m["latency_ms"][f"b{b}"]["p50"]
            if tb > 0 and tm > 0:
                m[f"speedup_b{b}"] = tb / tm


def compare(
    models: Mapping[str, nn.Module],
    data: DataBundle | None = None,
    *,
    baseline: str | None = None,
    config: MeasureConfig | Mapping[str, Any] | None = None,
    example_input: torch.Tensor | None = None,
) -> Report:
    """Measure every model in one run; rows other than ``baseline`` get ratios against it.

    Latency is interleaved across all models (see :func:`measure_latency`) so the measured
    ``speedup_b<N>`` holds on a noisy machine; ``flops_ratio`` is the theoretical speed-up.
    Inputs come from ``example_input`` (a batch-1 tensor) or ``data.example_input``.
    """
    cfg = validate_config(MeasureConfig, config, "MeasureConfig")
    if not models:
        raise ConfigError("compare needs at least one model, e.g. {'baseline': model}")
    if baseline is not None and baseline not in models:
        raise ConfigError(f"baseline {baseline!r} is not one of the models: {', '.join(models)}")
    make_input = _input_maker(data, example_input)
    batch = max(cfg.batch_sizes)
    notes: list[str] = []
    with fixed_threads(cfg.threads) as threads:
        metrics = {name: _static_metrics(m, make_input, data, cfg) for name, m in models.items()}
        latency = measure_latency(
            models, make_input, cfg.batch_sizes, warmup=cfg.warmup, runs=cfg.runs
        )
        for name, model in models.items():
            m = metrics[name]
            m["latency_ms"] = latency[name]
            if cfg.memory:
                m["peak_mem_bytes"], m["peak_mem_source"] = peak_memory(model, make_input(batch))
                m["peak_mem_batch"] = batch
            m["energy_j"], m["energy_source"] = measure_energy(
                model,
                make_input,
                batch_size=batch,
                seconds=cfg.energy_seconds,
                source=cfg.energy,
                flops=m["flops"],
            )
    correct = {name: m.pop("correct") for name, m in metrics.items() if "correct" in m}
    if baseline is not None:
        _add_ratios(metrics, baseline, cfg.batch_sizes)
        if baseline in correct and len(correct) > 1:
            for name, hits in correct.items():
                if name != baseline:
                    test = mcnemar(correct[baseline], hits)
                    metrics[name]["accuracy_change_p"] = round(test["p_value"], 6)
                    metrics[name]["accuracy_change_discordant"] = [
                        test["only_base_right"],
                        test["only_other_right"],
                    ]
            notes.append(
                "accuracy_change_p: exact McNemar test against the baseline on the same "
                "examples (p >= 0.05: the accuracy change is within noise); accuracy_ci95: "
                "95 % Wilson interval"
            )
    notes.append(
        f"latency: {cfg.runs} interleaved rounds after {cfg.warmup} warm-up calls, "
        f"{threads} thread(s); p50/p95 in ms"
    )
    sources = sorted({str(m["energy_source"]) for m in metrics.values()})
    if any(s.startswith(("estimate", "codecarbon (estimate")) for s in sources):
        notes.append(f"energy_j is an estimate, not a meter reading: {'; '.join(sources)}")
    if data is None and cfg.accuracy:
        notes.append("accuracy not measured: no data given")
    rows = []
    for name, m in metrics.items():
        row: dict[str, Any] = {"variant": name}
        if data is not None:
            row.update(dataset=data.name, split=cfg.split)
        row["metrics"] = m
        rows.append(row)
    return Report(rows=rows, baseline=baseline, machine=machine_info(threads), notes=notes)


def measure(
    model: nn.Module,
    data: DataBundle | None = None,
    *,
    config: MeasureConfig | Mapping[str, Any] | None = None,
    name: str = "model",
    example_input: torch.Tensor | None = None,
) -> Report:
    """Measure one model (accuracy, size, FLOPs, latency, memory, energy) into a :class:`Report`."""
    return compare({name: model}, data, config=config, example_input=example_input)
