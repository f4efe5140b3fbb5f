"""Rounding rules as one-method plug-ins: nearest, and stochastic (unbiased in expectation).

Stochastic rounding rounds ``x`` up with probability ``x - floor(x)``, so ``E[round(x)] = x``:
the quantisation error averages out instead of accumulating (Gupta et al. 2015, "Deep Learning
with Limited Numerical Precision").
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from dwindle.errors import ConfigError

__all__ = ["ROUNDINGS", "NearestRounding", "Rounding", "StochasticRounding", "get_rounding"]


class Rounding(ABC):
    """Maps real values (already divided by the scale) to integers, as a float tensor."""

    name: str = ""

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor: ...


class NearestRounding(Rounding):
    """Round half to even (``torch.round``): deterministic, error at most 0.5 step."""

    name = "nearest"

    def __call__(self, x: Tensor) -> Tensor:
        return torch.round(x)


class StochasticRounding(Rounding):
    """Round up with probability equal to the fractional part; ``generator`` for reproducibility."""

    name = "stochastic"

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(self, x: Tensor) -> Tensor:
        noise = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return torch.floor(x + noise)


ROUNDINGS: dict[str, type[Rounding]] = {
    "nearest": NearestRounding,
    "stochastic": StochasticRounding,
}


def get_rounding(rounding: str | Rounding) -> Rounding:
    """A rounding instance from its name (``"nearest"``, ``"stochastic"``) or itself."""
    if isinstance(rounding, Rounding):
        return rounding
    if rounding not in ROUNDINGS:
        raise ConfigError(f"unknown rounding {rounding!r}; supported: {', '.join(ROUNDINGS)}")
    return ROUNDINGS[rounding]()
