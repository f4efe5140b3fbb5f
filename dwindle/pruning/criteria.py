"""Pruning criteria: small plug-in classes with one method each.

A :class:`Criterion` scores every weight (higher = more important, kept first); a
:class:`ThresholdRule` turns a layer's weights into the magnitude below which they are pruned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["Criterion", "HanThreshold", "Magnitude", "ThresholdRule"]


class Criterion(ABC):
    """Importance of each weight entry; the lowest scores are pruned first."""

    @abstractmethod
    def scores(self, weight: Tensor) -> Tensor:
        """A tensor of ``weight``'s shape; higher means keep."""


class Magnitude(Criterion):
    """|w|: the classic magnitude criterion (Han et al. 2015; Zhu & Gupta 2017)."""

    def scores(self, weight: Tensor) -> Tensor:
        return weight.detach().abs()


class ThresholdRule(ABC):
    """The magnitude threshold of one layer: weights with ``|w| <= threshold`` are pruned."""

    @abstractmethod
    def threshold(self, weight: Tensor) -> float:
        """Threshold for ``weight`` (the layer's dense weights)."""


class HanThreshold(ThresholdRule):
    """threshold = quality × std(layer weights) — Han et al. 2015, "Learning both Weights and
    Connections for Efficient Neural Networks" (the rule stated with its experiments).

    The standard deviation is taken over all the layer's weight entries given.
    """

    def __init__(self, quality: float) -> None:
        if quality < 0:
            raise ValueError(f"quality must be >= 0 (got {quality})")
        self.quality = quality

    def threshold(self, weight: Tensor) -> float:
        return self.quality * float(torch.std(weight.detach().double()).item())
