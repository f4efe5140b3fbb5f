"""Uniform fake quantisation: quantisation parameters, quantise/dequantise, and the STE.

``fake_quant`` rounds a float tensor to the ``bits``-bit grid and maps it back to float, so a
model trains (or is evaluated) with the exact values an integer kernel will see. Gradients pass
through with the straight-through estimator (Bengio et al. 2013), zeroed where the value was
clipped, as in Jacob et al. 2018 ("Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", §3).

Two grids: *symmetric* (zero point 0, narrow signed range ``[-(2^(b-1)-1), 2^(b-1)-1]``, used
for weights so an integer kernel needs no zero-point correction) and *affine* (unsigned
``[0, 2^b - 1]`` with a zero point that represents 0.0 exactly, used for activations).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dwindle.errors import ConfigError
from dwindle.quantization.observers import Observer, make_observer
from dwindle.quantization.rounding import NearestRounding, Rounding, get_rounding

__all__ = [
    "UNIFORM_BITS",
    "FakeQuantize",
    "QParams",
    "check_bits",
    "compute_qparams",
    "dequantize",
    "fake_quant",
    "qrange",
    "quantize",
]

UNIFORM_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
_EPS = 1e-12


def check_bits(bits: int, supported: Iterable[int] = UNIFORM_BITS, what: str = "bit width") -> int:
    """``bits`` if it is in ``supported``; otherwise a :class:`ConfigError` listing them."""
    allowed = tuple(supported)
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in allowed:
        raise ConfigError(
            f"{what} {bits!r} is not supported; supported bit widths: "
            f"{', '.join(map(str, allowed))}"
        )
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of the grid: narrow signed when symmetric, unsigned otherwise."""
    check_bits(bits)
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


@dataclass(frozen=True)
class QParams:
    """Scale and zero point (tensors; one per channel along ``axis`` or scalars) and the range."""

    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int
    axis: int | None = None


def _along(t: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """Reshape per-channel ``t`` so it broadcasts over ``x`` along ``axis``."""
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def compute_qparams(
    lo: Tensor, hi: Tensor, bits: int, symmetric: bool, axis: int | None = None
) -> QParams:
    """Scale/zero point mapping ``[lo, hi]`` (widened to contain 0) onto the ``bits`` grid."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo.detach().float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.detach().float(), torch.zeros_like(hi, dtype=torch.float32))
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
        zero = torch.zeros_like(scale)
    else:
        scale = (hi - lo) / (qmax - qmin)
        zero = torch.clamp(torch.round(qmin - lo / scale.clamp_min(_EPS)), qmin, qmax)
    return QParams(scale.clamp_min(_EPS), zero, qmin, qmax, axis)


def quantize(x: Tensor, qp: QParams, rounding: Rounding | None = None) -> Tensor:
    """Integer codes of ``x`` (as a float tensor holding whole numbers) on the grid ``qp``."""
    rnd = rounding or NearestRounding()
    scale, zero = _along(qp.scale, x, qp.axis), _along(qp.zero_point, x, qp.axis)
    return torch.clamp(rnd(x / scale) + zero, qp.qmin, qp.qmax)


def dequantize(q: Tensor, qp: QParams) -> Tensor:
    """Float values of integer codes ``q``."""
    scale, zero = _along(qp.scale, q, qp.axis), _along(qp.zero_point, q, qp.axis)
    return (q.float() - zero) * scale


class _FakeQuantSTE(torch.autograd.Function):
    """Quantise-dequantise forward; identity gradient inside the range, zero where clipped."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, qp: QParams, rounding: Rounding) -> Tensor:
        scale, zero = _along(qp.scale, x, qp.axis), _along(qp.zero_point, x, qp.axis)
        unclipped = rounding(x / scale) + zero
        ctx.save_for_backward((unclipped >= qp.qmin) & (unclipped <= qp.qmax))
        return (torch.clamp(unclipped, qp.qmin, qp.qmax) - zero) * scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


def fake_quant(x: Tensor, qp: QParams, rounding: Rounding | str = "nearest") -> Tensor:
    """``dequantize(quantize(x))`` with the straight-through estimator for its gradient."""
    return _FakeQuantSTE.apply(x, qp, get_rounding(rounding))


class FakeQuantize(nn.Module):
    """Observes a tensor's range, then fake-quantises it to ``bits`` bits.

    ``axis`` None is per-tensor; an int is per-channel along that axis (0 for weights).
    The observer updates in training mode while ``observing`` is True (turn it off to freeze
    the ranges late in QAT, as Jacob et al. do); scale and zero point live in buffers so they
    are saved with the model.
    """

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        axis: int | None = None,
        observer: Observer | str = "minmax",
        rounding: Rounding | str = "nearest",
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.symmetric = symmetric
        self.axis = axis
        self.observer = (
            make_observer(observer, axis=axis) if isinstance(observer, str) else observer
        )
        self.rounding = get_rounding(rounding)
        self.observing = True
        self.enabled = True
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0.0))
        self.register_buffer("initialised", torch.tensor(False))
        self._seen_initialised = False  # host-side copy: no device sync on every forward

    def is_initialised(self) -> bool:
        """Whether a range was observed (the buffer read once, then remembered on the host, so a
        forward on CUDA does not wait for the device)."""
        if not self._seen_initialised:
            self._seen_initialised = bool(self.initialised)
        return self._seen_initialised

    def mark_initialised(self, device: torch.device) -> None:
        """Record (in the buffer and on the host) that a range has been observed."""
        self.initialised = torch.tensor(True, device=device)
        self._seen_initialised = True

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._seen_initialised = False  # the loaded buffer decides again
        super()._load_from_state_dict(*args, **kwargs)

    def qparams(self) -> QParams:
        qmin, qmax = qrange(self.bits, self.symmetric)
        return QParams(self.scale, self.zero_point, qmin, qmax, self.axis)

    def calibrate(self, x: Tensor) -> None:
        """Feed ``x`` to the observer and refresh scale and zero point."""
        self.observer.update(x.detach())
        lo, hi = self.observer.range(self.bits, self.symmetric)
        qp = compute_qparams(lo, hi, self.bits, self.symmetric, self.axis)
        self.scale = qp.scale.to(x.device)
        self.zero_point = qp.zero_point.to(x.device)
        self.mark_initialised(x.device)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        # Ranges follow the data while training; in eval they are fixed once observed.
        if (self.observing and self.training) or not self.is_initialised():
            self.calibrate(x)
        return fake_quant(x, self.qparams(), self.rounding)

    def extra_repr(self) -> str:
        kind = "symmetric" if self.symmetric else "affine"
        where = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"bits={self.bits}, {kind}, {where}, rounding={self.rounding.name}"
