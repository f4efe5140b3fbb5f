"""Peak memory of one inference: resident weights plus the peak of allocations during the call."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode, prepare_input

__all__ = ["peak_memory", "state_bytes"]

PROFILER_SOURCE = "torch profiler: weights + input + peak activations"
RSS_SOURCE = "RSS delta (/proc/self/statm) around one call + weights; misses transient peaks"
WEIGHTS_SOURCE = "weights and buffers only (no profiler, no /proc): activations not counted"
CUDA_SOURCE = "CUDA allocator: weights + input + peak allocated during one forward"


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers in memory, tied tensors counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in (*model.parameters(), *model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Mute file descriptor 2: the profiler's C++ side prints start/stop lines there."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd (embedded interpreters): just run
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _profiled_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Max running total of CPU allocations minus frees, in time order, during one forward."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _stderr_silenced(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        model(x)
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def _cuda_peak(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes the CUDA caching allocator held at the peak of one forward beyond what was
    allocated before it (other models and tensors on the GPU do not count)."""
    torch.cuda.synchronize(x.device)
    before = torch.cuda.memory_allocated(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    model(x)
    torch.cuda.synchronize(x.device)
    return max(0, torch.cuda.max_memory_allocated(x.device) - before)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(model: nn.Module, example_input: torch.Tensor) -> tuple[int | None, str]:
    """``(bytes, source)``: weights and buffers plus the peak memory one forward pass allocates.

    Uses the torch profiler's allocation events; falls back to the RSS change around the
    call when the profiler is unavailable. ``source`` says which was used.
    """
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError(
            f"example_input must be a tensor batch, e.g. data.example_input(32); "
            f"got {type(example_input).__name__}"
        )
    if callable(getattr(model, "dwindle_param_count", None)):
        # A wrapped runtime (onnxruntime...) allocates outside torch: the profiler would see
        # only the input tensor, so report no number rather than a wrong one.
        return None, "not measured: inference runs outside torch (wrapped runtime)"
    x = prepare_input(model, example_input)
    weights = state_bytes(model)
    with eval_mode(model, keep_buffers=True), torch.inference_mode():
        model(x)  # first-call allocations (lazy init, caches) are not the model's steady peak
        if x.device.type == "cuda":
            return weights + x.numel() * x.element_size() + _cuda_peak(model, x), CUDA_SOURCE
        try:
            peak = _profiled_peak(model, x)
        except (RuntimeError, AttributeError):  # profiler busy/missing or its event API changed
            try:
                before = _rss_bytes()
                model(x)
                return weights + max(0, _rss_bytes() - before), RSS_SOURCE
            except OSError:  # no /proc (not Linux)
                return weights, WEIGHTS_SOURCE
    return weights + x.numel() * x.element_size() + peak, PROFILER_SOURCE
