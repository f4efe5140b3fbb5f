"""Shared test helpers for models: non-trivial batch-norm state, silenced channels."""

from __future__ import annotations

import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 1, shift: float = 0.1) -> nn.Module:
    """Give every BatchNorm2d random statistics and affine terms, and put ``model`` in eval.

    Freshly created BN layers are the identity (mean 0, var 1, weight 1, bias 0), so a
    check that pruning or folding keeps outputs identical would pass for the wrong reason;
    ``shift`` scales the random means and biases.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * shift)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * shift)
    return model.eval()


def silence(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    """Make ``channels`` of conv→bn exactly zero (and of least L1 norm)."""
    conv.weight.data[channels] = 0
    for t in (bn.weight.data, bn.bias.data, bn.running_mean):
        t[channels] = 0
