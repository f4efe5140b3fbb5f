"""Latency, measured interleaved across models so machine noise hits every model alike."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode, model_device, prepare_input

__all__ = ["fixed_threads", "measure_latency", "percentiles"]


@contextlib.contextmanager
def fixed_threads(threads: int | None) -> Iterator[int]:
    """Pin torch's intra-op thread count for the block (restored after); yields the count."""
    if threads is None:
        yield torch.get_num_threads()
        return
    if threads < 1:
        raise ConfigError(f"threads must be >= 1 (got {threads}); or None to keep torch's setting")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(old)


def _quantile(sorted_ms: Sequence[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), without importing numpy.
    pos = (len(sorted_ms) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return float(sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo))


def percentiles(times_ms: Sequence[float]) -> dict[str, float]:
    """``{"p50": ..., "p95": ...}`` of ``times_ms`` (linear interpolation, like numpy)."""
    if not times_ms:
        raise ConfigError("percentiles need at least one timing")
    ordered = sorted(times_ms)
    return {"p50": _quantile(ordered, 0.50), "p95": _quantile(ordered, 0.95)}


def _validate(models: Mapping[str, nn.Module], batch_sizes: Sequence[int], warmup: int, runs: int):
    if not models:
        raise ConfigError("measure_latency needs at least one model, e.g. {'model': model}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ConfigError(f"batch_sizes must be non-empty and each >= 1 (got {tuple(batch_sizes)})")
    if runs < 1:
        raise ConfigError(f"runs must be >= 1 (got {runs}); 30 gives stable percentiles")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0 (got {warmup})")


def _sync(devices: set[str]) -> None:
    # CUDA kernels run asynchronously; without a sync the clock stops before the work does.
    if "cuda" in devices:
        torch.cuda.synchronize()


def measure_latency(
    models: Mapping[str, nn.Module],
    make_input: Callable[[int], torch.Tensor],
    batch_sizes: Sequence[int] = (1, 32),
    *,
    warmup: int = 5,
    runs: int = 30,
    threads: int | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Forward-pass latency in ms: ``{name: {"b<batch>": {"p50": ms, "p95": ms}}}``.

    For each batch size every model is warmed up, then ``runs`` rounds each time every model
    once, the order rotated per round, so a noisy neighbour slows all models alike and ratios
    between them hold. Eval mode and ``torch.inference_mode``; ``threads`` pins torch's threads.
    """
    _validate(models, batch_sizes, warmup, runs)
    names = list(models)
    devices = {model_device(m).type for m in models.values()}
    result: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    with contextlib.ExitStack() as stack:
        stack.enter_context(fixed_threads(threads))
        for m in models.values():
            stack.enter_context(eval_mode(m))
        stack.enter_context(torch.inference_mode())
        for b in batch_sizes:
            base = make_input(int(b))
            inputs = {n: prepare_input(models[n], base) for n in names}
            for n in names:
                for _ in range(warmup):
                    models[n](inputs[n])
            _sync(devices)
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(runs):
                shift = r % len(names)
                for n in names[shift:] + names[:shift]:
                    start = time.perf_counter()
                    models[n](inputs[n])
                    _sync(devices)
                    times[n].append((time.perf_counter() - start) * 1e3)
            for n in names:
                result[n][f"b{int(b)}"] = percentiles(times[n])
    return result
