"""Observers: estimate the range ``[lo, hi]`` a tensor is quantised over.

* ``MinMaxObserver``: the running minimum and maximum (exact for weights).
* ``MovingAverageObserver``: an exponential moving average of each batch's min/max, the
  activation observer of Jacob et al. 2018 (§3.1), robust to one odd batch.
* ``PercentileObserver``: clips the tails at a percentile of ``|x|`` (outliers cost range).
* ``MSEObserver``: searches the clipping range that minimises the quantisation MSE
  (Banner et al. 2019, "Post-training 4-bit quantization"), worth most at low bit widths.

Per-channel observers (``axis`` an int) keep one range per slice along ``axis``.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor, nn

from dwindle.errors import ConfigError

__all__ = [
    "OBSERVERS",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageObserver",
    "Observer",
    "PercentileObserver",
    "make_observer",
]

_MAX_SAMPLE = 1 << 16  # values kept per channel for percentile / MSE search


def _flat(x: Tensor, axis: int | None) -> Tensor:
    """``x`` as (channels, values): one row per channel, or one row when per-tensor."""
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer(nn.Module):
    """Tracks statistics of the tensors it sees; :meth:`range` turns them into ``(lo, hi)``."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def _squeeze(self, t: Tensor) -> Tensor:
        return t.squeeze(0) if self.axis is None else t

    @abstractmethod
    def update(self, x: Tensor) -> None: ...

    def range(self, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        """The range to quantise over (``bits``/``symmetric`` matter to the MSE search only)."""
        if not torch.isfinite(self.lo).all():
            raise ConfigError(
                f"{type(self).__name__} has seen no data; run calibration batches through the "
                "model (or a tensor through the observer) before asking for its range"
            )
        return self.lo, self.hi


class MinMaxObserver(Observer):
    """The running min and max over everything seen."""

    def update(self, x: Tensor) -> None:
        rows = _flat(x, self.axis)
        lo, hi = self._squeeze(rows.amin(1)), self._squeeze(rows.amax(1))
        if torch.isfinite(self.lo).all() and self.lo.shape == lo.shape:
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo, self.hi = lo, hi


class MovingAverageObserver(Observer):
    """Exponential moving average of per-batch min/max: ``r ← (1 - m) r + m r_batch``."""

    def __init__(self, axis: int | None = None, momentum: float = 0.01) -> None:
        super().__init__(axis)
        if not 0 < momentum <= 1:
            raise ConfigError(f"momentum must be in (0, 1] (got {momentum})")
        self.momentum = momentum

    def update(self, x: Tensor) -> None:
        rows = _flat(x, self.axis)
        lo, hi = self._squeeze(rows.amin(1)), self._squeeze(rows.amax(1))
        if torch.isfinite(self.lo).all() and self.lo.shape == lo.shape:
            m = self.momentum
            lo, hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi
        self.lo, self.hi = lo, hi


def _sample(rows: Tensor) -> Tensor:
    if rows.shape[1] <= _MAX_SAMPLE:
        return rows
    idx = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(0))[:_MAX_SAMPLE]
    return rows[:, idx]


class PercentileObserver(Observer):
    """Range clipped at the ``percentile`` of each side (moving average across batches)."""

    def __init__(
        self, axis: int | None = None, percentile: float = 99.99, momentum: float = 0.1
    ) -> None:
        super().__init__(axis)
        if not 50 < percentile <= 100:
            raise ConfigError(f"percentile must be in (50, 100] (got {percentile})")
        self.percentile, self.momentum = percentile, momentum

    def update(self, x: Tensor) -> None:
        rows = _sample(_flat(x, self.axis))
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        qs = torch.quantile(rows, q, dim=1)
        lo, hi = self._squeeze(qs[0]), self._squeeze(qs[1])
        if torch.isfinite(self.lo).all() and self.lo.shape == lo.shape:
            m = self.momentum
            lo, hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi
        self.lo, self.hi = lo, hi


class MSEObserver(Observer):
    """Min/max shrunk by the factor (of ``grid`` candidates) that minimises quantisation MSE.

    Keeps a sample of the last tensor seen to score the candidates on.
    """

    def __init__(self, axis: int | None = None, grid: int = 80, min_ratio: float = 0.2) -> None:
        super().__init__(axis)
        self.grid, self.min_ratio = grid, min_ratio
        self.register_buffer("sample", torch.empty(0))

    def update(self, x: Tensor) -> None:
        rows = _flat(x, self.axis)
        lo, hi = self._squeeze(rows.amin(1)), self._squeeze(rows.amax(1))
        if torch.isfinite(self.lo).all() and self.lo.shape == lo.shape:
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo, self.hi = lo, hi
        self.sample = _sample(rows)

    def range(self, bits: int, symmetric: bool) -> tuple[Tensor, Tensor]:
        lo, hi = super().range(bits, symmetric)
        from dwindle.quantization.fake_quant import compute_qparams, dequantize, quantize

        rows = self.sample
        lo_r, hi_r = lo.reshape(-1, 1), hi.reshape(-1, 1)
        best_err = torch.full((rows.shape[0], 1), float("inf"))
        best_ratio = torch.ones(rows.shape[0], 1)
        for i in range(self.grid):
            ratio = 1 - (1 - self.min_ratio) * i / max(1, self.grid - 1)
            qp = compute_qparams(lo_r * ratio, hi_r * ratio, bits, symmetric, axis=0)
            err = (dequantize(quantize(rows, qp), qp) - rows).pow(2).mean(1, keepdim=True)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
        ratio = best_ratio.reshape(lo.shape)
        return lo * ratio, hi * ratio


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}


def make_observer(name: str, axis: int | None = None) -> Observer:
    """An observer by name (``minmax``, ``moving_average``, ``percentile``, ``mse``)."""
    if name not in OBSERVERS:
        raise ConfigError(f"unknown observer {name!r}; supported: {', '.join(OBSERVERS)}")
    return OBSERVERS[name](axis=axis)
