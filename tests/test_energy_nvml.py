"""GPU energy through NVML, checked on CPU with a fake NVML whose counter the model drives."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.metrics import measure_energy
from dwindle.metrics.energy_nvml import nvml_energy

MJ_PER_CALL = 50  # what the fake board draws per forward, in millijoules


class FakeNVML(types.SimpleNamespace):
    """The few NVML calls dwindle makes; the energy counter advances only on model calls."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__(counter_mj=1_000_000, inits=0)

    def nvmlInit(self) -> None:
        self.inits += 1

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        return self.counter_mj

    def nvmlDeviceGetName(self, handle: object) -> bytes:
        return b"Fake GPU"


class Metered(nn.Module):
    """A tiny model whose every forward costs the fake board ``MJ_PER_CALL``."""

    def __init__(self, nvml: FakeNVML) -> None:
        super().__init__()
        self.nvml, self.fc = nvml, nn.Linear(4, 2)
        self.calls, self.modes = 0, set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.modes.add((self.training, torch.is_inference_mode_enabled()))
        self.nvml.counter_mj += MJ_PER_CALL
        return self.fc(x)


def test_nvml_energy_is_the_counter_delta_per_sample() -> None:
    nvml = FakeNVML()
    model = Metered(nvml)
    syncs = []
    joules, label = nvml_energy(
        model, torch.randn(8, 4), 0.02, nvml=nvml, handle="h", sync=lambda: syncs.append(1)
    )
    timed = model.calls - 2  # the two warm-up calls happen before the first reading
    assert timed >= 1 and len(syncs) == 2
    # each timed call adds 50 mJ for a batch of 8 samples
    assert joules == pytest.approx(MJ_PER_CALL / 1000 / 8)
    assert label == "NVML (Fake GPU board energy counter, whole GPU during the run)"
    assert model.modes == {(False, True)}  # every call in eval and inference mode
    assert model.training  # the caller's mode is restored


def test_nvml_source_needs_a_model_on_the_gpu() -> None:
    with pytest.raises(ConfigError, match=r"model is on cpu; move it to the GPU first"):
        measure_energy(nn.Linear(4, 2), lambda n: torch.randn(n, 4), source="nvml")


def test_auto_on_cpu_never_touches_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise AssertionError("NVML must not be used for a model on the CPU")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=boom))
    joules, label = measure_energy(
        nn.Linear(4, 2), lambda n: torch.randn(n, 4), source="estimate", batch_size=2
    )
    assert joules is not None and joules > 0 and label.startswith("estimate")
    _, auto_label = measure_energy(
        nn.Linear(4, 2), lambda n: torch.randn(n, 4), source="auto", batch_size=2, seconds=0.05
    )
    assert "NVML" not in auto_label


def test_unknown_source_lists_nvml() -> None:
    with pytest.raises(ConfigError, match="choose auto, nvml, rapl"):
        measure_energy(nn.Linear(4, 2), lambda n: torch.randn(n, 4), source="gpu")  # type: ignore[arg-type]


def test_auto_on_a_gpu_falls_back_to_the_estimate_when_nvml_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU whose board has no energy counter (pre-Volta) still gets a figure, labelled."""
    import dwindle.metrics.energy as energy
    import dwindle.metrics.energy_nvml as energy_nvml

    def no_counter(*args: object, **kwargs: object) -> tuple[float, str]:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    real = energy.available
    monkeypatch.setattr(energy, "_on_gpu", lambda x: True)  # this CPU batch stands in for one
    monkeypatch.setattr(energy, "available", lambda name: name == "pynvml" or real(name))
    monkeypatch.setattr(energy_nvml, "nvml_energy", no_counter)
    model = nn.Linear(4, 2)
    joules, label = measure_energy(model, lambda n: torch.randn(n, 4), source="auto")
    estimate, _ = measure_energy(model, lambda n: torch.randn(n, 4), source="estimate")
    assert joules == pytest.approx(estimate)
    assert label.startswith("estimate: FLOPs")
    assert label.endswith("; NVML failed: RuntimeError: NVML_ERROR_NOT_SUPPORTED")
