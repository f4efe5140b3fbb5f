"""Learned step size quantisation (LSQ; Esser et al. 2020, "Learned Step Size Quantization").

The quantiser's step ``s`` is a parameter trained with the network: the forward is
``(clamp(round(x/s) + z, qmin, qmax) - z) · s`` with a straight-through rounding, so ``s``
receives the LSQ gradient (eq. 3), scaled by ``1/sqrt(N · qmax)`` (§2.2) so it moves as fast as
the weights. The step starts where a post-training quantiser would put it (the MSE-optimal
clipping range of the first batch, Banner et al. 2019) instead of LSQ's ``2·mean|x|/sqrt(qmax)``,
which fits a checkpoint that is already trained. At 4 bits a learned range is what separates
QAT that stays within tenths of a point of float (PACT, Choi et al. 2018; LSQ) from min/max
ranges that lose points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dwindle.quantization.fake_quant import FakeQuantize, compute_qparams, qrange
from dwindle.quantization.lowbit import Codes, UniformWeight, _col
from dwindle.quantization.observers import make_observer

__all__ = ["LSQActivation", "LSQWeight", "lsq_fake_quant"]


def _round_ste(x: Tensor) -> Tensor:
    return (x.round() - x).detach() + x


def _grad_scale(s: Tensor, g: float) -> Tensor:
    """``s`` in the forward, ``g · ∂L/∂s`` in the backward (LSQ §2.2)."""
    return (s - s * g).detach() + s * g


def lsq_fake_quant(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_scale: float
) -> Tensor:
    """Fake-quantise ``x`` with a learnable ``scale`` (broadcast against ``x``), LSQ gradients."""
    s = _grad_scale(scale, grad_scale)
    q = torch.clamp(_round_ste(x / s) + zero_point, qmin, qmax)
    return (q - zero_point) * s


class LSQActivation(FakeQuantize):
    """Per-tensor activation quantiser with a learned step (zero point fixed at calibration).

    A drop-in :class:`FakeQuantize`: the integer model converted from it reads ``scale`` and
    ``zero_point`` the same way.
    """

    def __init__(self, bits: int = 4, symmetric: bool = False, observer: str = "mse") -> None:
        super().__init__(bits, symmetric, None, observer)
        del self.scale
        self.scale = nn.Parameter(torch.tensor(1.0))

    def calibrate(self, x: Tensor) -> None:
        self.observer.update(x.detach())
        lo, hi = self.observer.range(self.bits, self.symmetric)
        qp = compute_qparams(lo, hi, self.bits, self.symmetric, None)
        with torch.no_grad():
            self.scale.copy_(qp.scale.to(self.scale.device))
        self.zero_point = qp.zero_point.to(x.device)
        self.mark_initialised(x.device)
        if hasattr(self.observer, "sample"):  # the step learns from here on: drop the sample
            self.observer.sample = torch.empty(0, device=x.device)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if not self.is_initialised():
            self.calibrate(x)
        qmin, qmax = qrange(self.bits, self.symmetric)
        g = 1.0 / math.sqrt(x[0].numel() * qmax)
        scale = self.scale.abs().clamp_min(1e-8)
        return lsq_fake_quant(x, scale, self.zero_point, qmin, qmax, g)


class LSQWeight(UniformWeight):
    """Symmetric ``bits``-bit weights, one learned step per output channel (LSQ for weights).

    Codes and scale for packing come from the learned step, so what trained is what is stored.
    ``full_range`` uses LSQ's grid ``[-2^(b-1), 2^(b-1) - 1]`` (one more negative level, 16
    instead of 15 at 4 bits) instead of the narrow ``±(2^(b-1) - 1)``; codes still pack in
    ``bits`` bits.
    """

    method = "uniform"

    def __init__(self, bits: int = 4, per_channel: bool = True, full_range: bool = False) -> None:
        super().__init__(bits, per_channel, observer="mse")
        self.full_range = full_range
        self.step_size = nn.Parameter(torch.empty(0))

    def grid(self) -> tuple[int, int]:
        """The integer codes' range."""
        lo, hi = qrange(self.bits, True)
        return (lo - 1 if self.full_range else lo), hi

    def init_from(self, w: Tensor) -> None:
        """Start the steps at the MSE-optimal range of ``w`` (before the optimizer is built)."""
        obs = make_observer("mse", axis=0 if self.per_channel else None)
        obs.update(w.detach())
        lo, hi = obs.range(self.bits, True)
        qp = compute_qparams(lo, hi, self.bits, True, axis=0 if self.per_channel else None)
        scale = qp.scale.reshape(-1).to(w.device)
        self.step_size = nn.Parameter(scale if self.per_channel else scale[:1])

    def _scale(self, w: Tensor) -> Tensor:
        if self.step_size.numel() == 0:
            self.init_from(w)
        s = self.step_size.abs().clamp_min(1e-8)
        return s if self.per_channel else s.expand(w.shape[0])

    def codes(self, w: Tensor) -> Codes:
        scale = self._scale(w).detach()
        lo, hi = self.grid()
        q = torch.clamp(torch.round(w.detach().float() / _col(scale, w)), lo, hi)
        return q, scale, None

    def forward(self, w: Tensor) -> Tensor:
        lo, hi = self.grid()
        g = 1.0 / math.sqrt(w[0].numel() * hi)
        return lsq_fake_quant(w, _col(self._scale(w), w), torch.zeros(()), lo, hi, g)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        key = prefix + "step_size"
        if key in state_dict and self.step_size.shape != state_dict[key].shape:
            self.step_size = nn.Parameter(torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
