"""dwindle.metrics at run time: latency, peak memory and energy (with their fallbacks)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

import dwindle.metrics.energy as energy_module
import dwindle.metrics.memory as memory_module
from dwindle._imports import available
from dwindle.errors import ConfigError, DwindleError
from dwindle.metrics import (
    J_PER_FLOP,
    measure_energy,
    measure_latency,
    peak_memory,
)

FAST = {"runs": 3, "warmup": 1, "energy": "estimate", "batch_sizes": (1, 4)}


class Sleepy(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.fc(x)


def test_latency_is_interleaved_and_restores_state() -> None:
    slow, fast = Sleepy(0.003).train(), Sleepy(0.0)
    order: list[str] = []
    slow.register_forward_hook(lambda *a: order.append("slow"))
    fast.register_forward_hook(lambda *a: order.append("fast"))
    threads = torch.get_num_threads()
    res = measure_latency(
        {"slow": slow, "fast": fast},
        lambda b: torch.randn(b, 4),
        (1, 2),
        warmup=1,
        runs=4,
        threads=1,
    )
    assert set(res) == {"slow", "fast"} and set(res["slow"]) == {"b1", "b2"}
    assert set(res["fast"]["b2"]) == {"p50", "p95"}
    assert res["slow"]["b1"]["p50"] >= 3.0 > res["fast"]["b1"]["p50"]
    # per batch size: warm-up (1 each), then rounds alternating in rotated order
    assert order[:6] == ["slow", "fast", "slow", "fast", "fast", "slow"]
    assert slow.training and torch.get_num_threads() == threads


def test_latency_rejects_bad_settings() -> None:
    model = {"m": nn.Linear(2, 2)}
    with pytest.raises(ConfigError, match=r"runs must be >= 1 \(got 0\)"):
        measure_latency(model, lambda b: torch.randn(b, 2), runs=0)
    with pytest.raises(ConfigError, match="batch_sizes must be non-empty and each >= 1"):
        measure_latency(model, lambda b: torch.randn(b, 2), batch_sizes=(0,))
    with pytest.raises(ConfigError, match="at least one model"):
        measure_latency({}, lambda b: torch.randn(b, 2))


# --- memory / energy -------------------------------------------------------------------------


def test_peak_memory_covers_weights() -> None:
    model = nn.Linear(2048, 2048)
    weights = (2048 * 2048 + 2048) * 4
    peak, source = peak_memory(model, torch.randn(32, 2048))
    assert peak >= weights + 32 * 2048 * 4  # plus at least the output activations
    assert peak < 2 * weights
    assert source.startswith("torch profiler")


def test_peak_memory_falls_back_to_rss_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(model: nn.Module, x: torch.Tensor) -> int:
        raise RuntimeError("Can't profile: another profiler is running")

    monkeypatch.setattr(memory_module, "_profiled_peak", busy)
    peak, source = peak_memory(nn.Linear(256, 256), torch.randn(4, 256))
    assert peak >= (256 * 256 + 256) * 4
    assert source == memory_module.RSS_SOURCE and "RSS" in source


def test_energy_is_always_labelled() -> None:
    model = nn.Linear(10, 10)
    joules, source = measure_energy(model, lambda b: torch.randn(b, 10), source="estimate")
    assert joules == pytest.approx(2 * 10 * 10 * J_PER_FLOP)
    assert source.startswith("estimate: FLOPs × ")
    assert measure_energy(model, lambda b: torch.randn(b, 10), source="off") == (None, "off")
    with pytest.raises(ConfigError, match="unknown energy source 'joulemeter'"):
        measure_energy(model, lambda b: torch.randn(b, 10), source="joulemeter")  # type: ignore[arg-type]


def test_rapl_counters_are_read_with_wraparound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(energy_module, "RAPL_ROOT", tmp_path)
    with pytest.raises(DwindleError, match=r"RAPL energy counters .* unreadable"):
        measure_energy(nn.Linear(2, 2), lambda b: torch.randn(b, 2), source="rapl")
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "energy_uj").write_text("0\n")
    (pkg / "max_energy_range_uj").write_text("1000000\n")
    reads = iter([[999_000], [1_000]])  # wrapped: 2000 µJ were spent
    monkeypatch.setattr(energy_module, "_read_rapl", lambda domains: next(reads))
    monkeypatch.setattr(energy_module, "_run_for", lambda model, x, seconds: 5)
    joules, source = measure_energy(
        nn.Linear(2, 2), lambda b: torch.randn(b, 2), batch_size=4, source="auto"
    )
    assert joules == pytest.approx(2000e-6 / 20)
    assert source.startswith("RAPL")


def test_auto_energy_survives_a_failing_codecarbon(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise PermissionError("no access to /proc/stat")

    monkeypatch.setattr(energy_module, "RAPL_ROOT", Path("/nonexistent-powercap"))
    monkeypatch.setattr(energy_module, "available", lambda module: True)
    monkeypatch.setattr(energy_module, "_by_codecarbon", broken)
    joules, source = measure_energy(nn.Linear(4, 4), lambda b: torch.randn(b, 4))
    assert joules == pytest.approx(2 * 4 * 4 * J_PER_FLOP)
    assert source.startswith("estimate: FLOPs")
    assert "codecarbon failed: PermissionError: no access to /proc/stat" in source


@pytest.mark.skipif(not available("codecarbon"), reason="needs dwindle[energy]")
def test_codecarbon_energy_is_labelled_with_its_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy_module, "RAPL_ROOT", Path("/nonexistent-powercap"))
    joules, source = measure_energy(
        nn.Linear(64, 64), lambda b: torch.randn(b, 64), batch_size=8, seconds=0.3
    )
    assert joules is not None and joules > 0
    assert source.startswith("codecarbon (")


# --- accuracy --------------------------------------------------------------------------------


def test_cuda_peak_counts_only_what_the_forward_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The allocator's peak minus what was allocated before the call (other models resident on
    the GPU do not count); checked with a fake allocator that the forward drives."""
    state = {"allocated": 10_000, "peak": 99_999, "forward_after_reset": False}  # stale peak

    class Allocating(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            state["forward_after_reset"] = state["peak"] == state["allocated"]
            state["peak"] = state["allocated"] + 4_096  # a transient activation buffer
            return x

    def reset(device: object = None) -> None:
        state["peak"] = state["allocated"]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: state["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: state["peak"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    assert memory_module._cuda_peak(Allocating(), torch.zeros(2)) == 4_096
    assert state["forward_after_reset"]
