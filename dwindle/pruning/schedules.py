"""Pruning schedules: how much to prune at time ``t`` (a round or an optimizer step).

Small plug-in classes with one method, :meth:`Schedule.value`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

__all__ = ["AGP", "Iterative", "OneShot", "Schedule"]


class Schedule(ABC):
    """Target amount (a sparsity, or a quality for threshold rules) at time ``t``."""

    @abstractmethod
    def value(self, t: int) -> float:
        """The target at time ``t``."""


@dataclass(frozen=True)
class OneShot(Schedule):
    """Everything at once: ``final`` from ``t = 0`` on."""

    final: float

    def value(self, t: int) -> float:
        return self.final


@dataclass(frozen=True)
class Iterative(Schedule):
    """``steps`` prune → retrain rounds (t = 1..steps) ending at ``final``.

    ``kind="geometric"`` (for sparsities) prunes the same fraction of the surviving weights
    each round: density_t = (1 - final)^(t/steps). ``kind="linear"`` (for thresholds, e.g.
    Han's quality) raises the target linearly: final · t/steps.
    """

    final: float
    steps: int
    kind: str = "geometric"

    def value(self, t: int) -> float:
        frac = min(max(t, 0), self.steps) / self.steps
        if self.kind == "linear":
            return self.final * frac
        return 1.0 - (1.0 - self.final) ** frac


@dataclass(frozen=True)
class AGP(Schedule):
    """Automated gradual pruning, Zhu & Gupta 2017 ("To prune, or not to prune"), eq. (1):

    s_t = s_f + (s_i − s_f)(1 − (t − t0)/(nΔt))³  for t0 ≤ t ≤ t0 + nΔt,

    s_i before t0 and s_f after. The mask is updated every Δt steps (``frequency``), so the
    value is held between updates: t is rounded down to the last update step.
    """

    initial: float
    final: float
    start: int
    frequency: int
    n: int

    def value(self, t: int) -> float:
        if t < self.start:
            return self.initial
        span = self.n * self.frequency
        last = self.start + (t - self.start) // self.frequency * self.frequency
        progress = min(1.0, (last - self.start) / span) if span else 1.0
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3

    def is_update_step(self, t: int) -> bool:
        """Whether the mask is recomputed at step ``t`` (t0, t0+Δt, ..., t0+nΔt)."""
        k, rest = divmod(t - self.start, self.frequency)
        return t >= self.start and rest == 0 and k <= self.n

    @property
    def end(self) -> int:
        return self.start + self.n * self.frequency

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and math.isfinite(self.final)):
            raise ValueError("AGP sparsities must be finite")
        if self.frequency < 1 or self.n < 0 or self.start < 0:
            raise ValueError("AGP needs frequency >= 1, n >= 0 and start >= 0")
