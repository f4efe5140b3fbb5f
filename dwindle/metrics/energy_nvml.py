"""GPU energy from NVML's board energy counter (Volta and newer GPUs): a meter, not a model.

``nvmlDeviceGetTotalEnergyConsumption`` counts the millijoules the whole board drew since the
driver loaded, so the figure covers everything on that GPU during the run (other processes
too) and is only as fine as the counter's update interval: the run lasts ``seconds`` (2 s by
default) so one update is a small share of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dwindle._imports import require

__all__ = ["nvml_energy", "nvml_handle"]


def nvml_handle(nvml: Any, device: torch.device) -> Any:
    """The NVML handle of CUDA ``device``, matched by PCI bus id (CUDA and NVML may number the
    GPUs differently under ``CUDA_VISIBLE_DEVICES``), by index where the bus id is unknown."""
    nvml.nvmlInit()
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        props = torch.cuda.get_device_properties(index)
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return nvml.nvmlDeviceGetHandleByPciBusId(bus)
    except (AttributeError, nvml.NVMLError):
        return nvml.nvmlDeviceGetHandleByIndex(index)


def nvml_energy(
    model: nn.Module,
    x: torch.Tensor,
    seconds: float,
    *,
    nvml: Any = None,
    handle: Any = None,
    sync: Callable[[], None] | None = None,
) -> tuple[float, str]:
    """``(joules per sample, label)`` of running ``model`` (in inference mode) on ``x`` for at
    least ``seconds``, read off the GPU's energy counter around the synchronised run."""
    from dwindle.metrics.energy import _WARMUP_CALLS, _inference, _run_for

    nvml = nvml if nvml is not None else require("pynvml", "gpu", "GPU energy from NVML")
    handle = handle if handle is not None else nvml_handle(nvml, x.device)
    sync = sync if sync is not None else (lambda: torch.cuda.synchronize(x.device))
    with _inference(model):
        for _ in range(_WARMUP_CALLS):
            model(x)
        sync()
        before = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # millijoules
        calls = _run_for(model, x, seconds)
        sync()  # the kernels queued by the loop finish inside the measured window
        after = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    name = nvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else str(name)
    label = f"NVML ({name} board energy counter, whole GPU during the run)"
    return (after - before) / 1000.0 / (calls * x.shape[0]), label
