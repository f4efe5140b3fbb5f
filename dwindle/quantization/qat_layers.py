"""The modules a QAT model is built from: a weighted layer with its batch norm folded in and
fake-quantised weights (Jacob et al. 2018, §3.2), and the binary activation of a BNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.quantization.lowbit import WeightQuantizer, binary_activation

__all__ = ["BinaryActivation", "QATLayer", "fold_bn"]


def fold_bn(
    weight: Tensor, bias: Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``layer`` followed by ``bn`` in eval mode, as one layer (Jacob §3.2).

    ``w' = w · γ/σ`` per output channel and ``b' = (b - μ) · γ/σ + β`` with
    ``σ = sqrt(running_var + eps)``.
    """
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    factor = gamma / std
    w = weight * factor.reshape((-1,) + (1,) * (weight.dim() - 1))
    b = bias if bias is not None else torch.zeros_like(std)
    return w, (b - bn.running_mean) * factor + beta


class QATLayer(nn.Module):
    """A Linear/Conv (optionally with its following BatchNorm folded in) with fake-quant weights.

    Training with BN: the folded weight is quantised, the convolution's output is divided by
    ``γ/σ`` again and normalised with batch statistics, so BN keeps learning. Eval (or after
    ``bn_frozen``): exactly the folded layer the integer model will run.
    """

    def __init__(
        self, layer: nn.Module, weight_quant: WeightQuantizer, bn: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.layer, self.weight_quant, self.bn = layer, weight_quant, bn
        self.bn_frozen = False
        self.quant_enabled = True

    def _op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, b)
        return self.layer._conv_forward(x, w, b)  # type: ignore[operator]

    def _q(self, w: Tensor) -> Tensor:
        return self.weight_quant(w) if self.quant_enabled else w

    def folded(self) -> tuple[Tensor, Tensor | None]:
        """The float weight and bias this layer computes with in eval (BN folded in)."""
        if self.bn is None:
            return self.layer.weight, self.layer.bias
        return fold_bn(self.layer.weight, self.layer.bias, self.bn)

    def forward(self, x: Tensor) -> Tensor:
        if self.bn is None or not self.training or self.bn_frozen:
            w, b = self.folded()
            return self._op(x, self._q(w), b)
        bn = self.bn
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w, _ = fold_bn(self.layer.weight, None, bn)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = self._op(x, self._q(w), None) / factor.reshape(shape)
        if self.layer.bias is not None:
            y = y + self.layer.bias.reshape(shape)
        return bn(y)


class BinaryActivation(nn.Module):
    """``sign(x)`` with the hard-tanh straight-through gradient (BNN activations)."""

    def forward(self, x: Tensor) -> Tensor:
        return binary_activation(x)
