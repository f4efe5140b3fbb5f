"""Energy per inference sample, always returned with the source it came from.

Order for ``source="auto"``: for a model on a CUDA GPU, that GPU's NVML energy counter (a meter,
extra ``gpu``); then the RAPL hardware counters (a meter), then codecarbon (on a machine without
RAPL, an estimate from CPU load and the CPU's TDP), then FLOPs × a constant.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from dwindle._imports import available, require
from dwindle.errors import ConfigError, DwindleError
from dwindle.metrics._model import eval_mode, prepare_input

__all__ = ["J_PER_FLOP", "RAPL_ROOT", "EnergySource", "measure_energy", "rapl_readable"]

EnergySource = Literal["auto", "nvml", "rapl", "codecarbon", "estimate", "off"]

# Order-of-magnitude CPU efficiency used only for the labelled estimate: a server CPU at full
# fp32 vector throughput does ~1e10 FLOP per joule (e.g. ~2 TFLOP/s at ~200 W package power).
# Real eager PyTorch on small models is less efficient, so the estimate is a lower bound.
J_PER_FLOP = 1e-10

RAPL_ROOT = Path("/sys/class/powercap")
_KWH_TO_J = 3.6e6
_WARMUP_CALLS = 2


def _rapl_domains() -> list[Path]:
    """Top-level RAPL package domains (``intel-rapl:0``, ``intel-rapl:1``; AMD uses them too)."""
    return sorted(p for p in RAPL_ROOT.glob("intel-rapl:*") if p.name.count(":") == 1)


def rapl_readable() -> bool:
    """True when every RAPL package energy counter can be read (often root-only)."""
    domains = _rapl_domains()
    try:
        for d in domains:
            int((d / "energy_uj").read_text())
    except (OSError, ValueError):
        return False
    return bool(domains)


def _read_rapl(domains: list[Path]) -> list[int]:
    return [int((d / "energy_uj").read_text()) for d in domains]


def _rapl_delta_j(domains: list[Path], before: list[int], after: list[int]) -> float:
    total = 0
    for d, b, a in zip(domains, before, after, strict=True):
        if a < b:  # the counter wrapped around at max_energy_range_uj
            a += int((d / "max_energy_range_uj").read_text())
        total += a - b
    return total / 1e6


def _run_for(model: nn.Module, x: torch.Tensor, seconds: float) -> int:
    """Run forwards for at least ``seconds`` (and at least once); return the number of calls."""
    calls = 0
    end = time.perf_counter() + seconds
    while calls == 0 or time.perf_counter() < end:
        model(x)
        calls += 1
    return calls


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    with eval_mode(model), torch.inference_mode():
        yield


def _by_rapl(model: nn.Module, x: torch.Tensor, seconds: float) -> tuple[float, str]:
    domains = _rapl_domains()
    with _inference(model):
        for _ in range(_WARMUP_CALLS):
            model(x)
        before = _read_rapl(domains)
        calls = _run_for(model, x, seconds)
        after = _read_rapl(domains)
    joules = _rapl_delta_j(domains, before, after)
    label = f"RAPL (powercap, {len(domains)} package(s), whole-machine energy during the run)"
    return joules / (calls * x.shape[0]), label


def _codecarbon_mode(tracker: object) -> str:
    """Describe how codecarbon got its figure; it estimates unless it found RAPL or a GPU meter."""
    for hw in getattr(tracker, "_hardware", []):  # private, hence every lookup is defensive
        mode = getattr(hw, "_mode", None)
        if mode is None:
            continue
        tdp, model = getattr(hw, "_tdp", "?"), getattr(hw, "_model", "?")
        if mode == "cpu_load":
            return f"estimate: process CPU load × {tdp} W TDP of {model!r} + RAM power model"
        if mode == "constant":
            return f"estimate: fixed share of {tdp} W TDP of {model!r} + RAM power model"
        return f"{mode.replace('_', ' ')} + RAM power model"
    return "mode unknown"


def _by_codecarbon(model: nn.Module, x: torch.Tensor, seconds: float) -> tuple[float, str]:
    codecarbon = require("codecarbon", "energy", "energy measurement with codecarbon")
    # Its logger is configured on import; "error" below only applies after the tracker exists.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = codecarbon.OfflineEmissionsTracker(
        country_iso_code="USA",  # only the CO2 figure depends on it; energy does not
        log_level="error",
        save_to_file=False,
        measure_power_secs=1,
        tracking_mode="process",
    )
    with _inference(model):
        for _ in range(_WARMUP_CALLS):
            model(x)
        tracker.start()
        try:
            start = time.perf_counter()
            calls = _run_for(model, x, seconds)
            elapsed = time.perf_counter() - start
        finally:
            tracker.stop()
    data = tracker.final_emissions_data
    # codecarbon's own energy total adds a whole sampling interval around start/stop (tens of
    # percent on a few-second run), so take its mean power estimates times the timed loop.
    watts = float(data.cpu_power) + float(data.ram_power) + float(data.gpu_power)
    label = f"codecarbon ({_codecarbon_mode(tracker)}; mean power × run time)"
    return watts * elapsed / (calls * x.shape[0]), label


def _on_gpu(x: torch.Tensor) -> bool:
    """Whether the measured batch (so the model) is on a CUDA device: NVML can meter it."""
    return x.device.type == "cuda"


def _by_estimate(model: nn.Module, x: torch.Tensor, flops: int | None) -> tuple[float, str]:
    if flops is None:
        from dwindle.metrics.flops import count_flops

        flops = count_flops(model, x)
    return flops * J_PER_FLOP, f"estimate: FLOPs × {J_PER_FLOP:g} J/FLOP (no power meter)"


def measure_energy(
    model: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    *,
    batch_size: int = 32,
    seconds: float = 2.0,
    source: EnergySource = "auto",
    flops: int | None = None,
) -> tuple[float | None, str]:
    """``(joules per sample, source)`` of running ``model`` on batches of ``batch_size``.

    ``source``: "nvml" (a CUDA model's GPU energy counter, extra ``gpu``), "rapl" (CPU
    hardware counters), "codecarbon" (extra ``energy``), "estimate" (``flops`` or counted FLOPs ×
    :data:`J_PER_FLOP`), "auto" (the first available in that order) or "off" (returns
    ``(None, "off")``). The number never comes without its source.
    """
    if source not in ("auto", "nvml", "rapl", "codecarbon", "estimate", "off"):
        raise ConfigError(
            f"unknown energy source {source!r}; choose auto, nvml, rapl, codecarbon, estimate "
            "or off"
        )
    if source == "off":
        return None, "off"
    if batch_size < 1 or seconds <= 0:
        raise ConfigError(
            f"energy needs batch_size >= 1 and seconds > 0 (got {batch_size}, {seconds})"
        )
    x = prepare_input(model, make_input(batch_size))
    if source == "nvml" and not _on_gpu(x):
        raise ConfigError(
            f"energy source 'nvml' reads a GPU's energy counter, but the model is on "
            f"{x.device.type}; move it to the GPU first (model.to('cuda'), or --device cuda on the "
            "command line) or use source='auto'"
        )
    if source == "nvml":
        from dwindle.metrics.energy_nvml import nvml_energy

        return nvml_energy(model, x, seconds)
    if source == "auto" and _on_gpu(x) and available("pynvml"):
        from dwindle.metrics.energy_nvml import nvml_energy

        try:
            return nvml_energy(model, x, seconds)
        except Exception as exc:  # e.g. a GPU without the counter (pre-Volta): say so, go on
            joules, label = _by_estimate(model, x[:1], flops)
            return joules, f"{label}; NVML failed: {type(exc).__name__}: {exc}"[:300]
    if source == "rapl" or (source == "auto" and rapl_readable()):
        if not rapl_readable():
            raise DwindleError(
                f"RAPL energy counters under {RAPL_ROOT}/intel-rapl:*/energy_uj are missing or "
                "unreadable (often root-only: `sudo chmod a+r` them); or use source='auto'"
            )
        return _by_rapl(model, x, seconds)
    if source == "codecarbon":
        return _by_codecarbon(model, x, seconds)
    if source == "auto" and available("codecarbon"):
        try:
            return _by_codecarbon(model, x, seconds)
        except Exception as exc:  # e.g. no psutil access in a sandbox: fall back, but say so
            joules, label = _by_estimate(model, x[:1], flops)
            return joules, f"{label}; codecarbon failed: {type(exc).__name__}: {exc}"[:300]
    return _by_estimate(model, x[:1], flops)
