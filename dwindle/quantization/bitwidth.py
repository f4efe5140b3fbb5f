"""Loss-aware mixed precision: per-layer weight bit widths under a size budget.

Each candidate layer is quantised alone at each candidate width and the increase of the
calibration loss is measured (the loss-increase criterion, a direct form of the sensitivity
that HAWQ, Dong et al. 2019, estimates with the Hessian trace). Treating the increases as
additive, a greedy knapsack then lowers, one step at a time, the layer whose next-lower width
costs the least loss per bit saved, until the weights fit ``avg_bits`` bits per weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.quantization.fake_quant import UNIFORM_BITS
from dwindle.quantization.lowbit import (
    LowBit,
    make_weight_quantizer,
    quantizable_layers,
    quantize_weights_,
)

__all__ = ["BitChoice", "MixedBits", "choose_bit_widths", "layer_sensitivity", "quantize_mixed_"]


class MixedBits(TargetedConfig):
    """Choose a uniform bit width per layer from ``candidates`` so the quantised weights average
    at most ``avg_bits`` bits, minimising the measured loss increase on ``batches`` batches."""

    candidates: tuple[int, ...] = (2, 4, 8)
    avg_bits: float = Field(4.0, gt=0, le=8)
    batches: int = Field(4, ge=1)
    batch_size: int = Field(256, ge=1)
    per_channel: bool = True
    on_unsupported: Literal["error", "float"] = "error"

    @field_validator("candidates")
    @classmethod
    def _supported(cls, c: tuple[int, ...]) -> tuple[int, ...]:
        bad = [b for b in c if b not in UNIFORM_BITS]
        if not c or bad:
            raise ValueError(
                f"candidate bit widths {list(bad or c)} are not supported; supported bit widths: "
                f"{', '.join(map(str, UNIFORM_BITS))}"
            )
        return tuple(sorted(set(c)))


@dataclass
class BitChoice:
    """The chosen width per layer, the measured loss increases, and the resulting average."""

    bits: dict[str, int]
    sensitivity: dict[str, dict[int, float]]
    avg_bits: float


def _loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    with torch.no_grad():
        return sum(float(F.cross_entropy(model(x), y)) for x, y in batches) / len(batches)


def _calibration(data: Any, config: MixedBits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    split = "val" if data.size("val") > 0 else "train"
    out = []
    for i, batch in enumerate(data.batches(split, config.batch_size, shuffle=True, seed=0)):
        if i >= config.batches:
            break
        out.append(batch)
    return out


def layer_sensitivity(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    candidates: tuple[int, ...],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    per_channel: bool = True,
) -> dict[str, dict[int, float]]:
    """Loss increase when only that layer's weights are quantised to each candidate width."""
    was_training = model.training
    model.eval()
    base = _loss(model, batches)
    out: dict[str, dict[int, float]] = {}
    for name, layer in layers:
        saved = layer.weight.data.clone()
        out[name] = {}
        for b in candidates:
            layer.weight.data = make_weight_quantizer("uniform", b, per_channel).dequantize(saved)
            out[name][b] = max(0.0, _loss(model, batches) - base)
        layer.weight.data = saved
    model.train(was_training)
    return out


def choose_bit_widths(model: nn.Module, config: MixedBits, data: Any) -> BitChoice:
    """Per-layer widths by loss increase under the ``avg_bits`` budget (greedy knapsack)."""
    layers = quantizable_layers(
        model, config.targets, config.exclude, config.on_unsupported, "quantize_mixed"
    )
    if not layers:
        raise ConfigError("quantize_mixed: no Linear/Conv layer matches targets")
    sens = layer_sensitivity(
        model, layers, config.candidates, _calibration(data, config), config.per_channel
    )
    sizes = {n: m.weight.numel() for n, m in layers}
    total = sum(sizes.values())
    cands = config.candidates
    bits = {n: cands[-1] for n in sizes}
    budget = config.avg_bits * total
    while sum(sizes[n] * bits[n] for n in sizes) > budget:
        best, best_cost = None, float("inf")
        for n, b in bits.items():
            i = cands.index(b)
            if i == 0:
                continue
            lower = cands[i - 1]
            cost = (sens[n][lower] - sens[n][b]) / (sizes[n] * (b - lower))
            if cost < best_cost:
                best, best_cost = n, cost
        if best is None:
            raise ConfigError(
                f"quantize_mixed: avg_bits={config.avg_bits} is below the smallest candidate "
                f"({cands[0]} bits); lower the candidates or raise avg_bits"
            )
        bits[best] = cands[cands.index(bits[best]) - 1]
    avg = sum(sizes[n] * bits[n] for n in sizes) / total
    return BitChoice(bits, sens, avg)


def quantize_mixed_(model: nn.Module, config: MixedBits, data: Any) -> nn.Module:
    """Choose widths with :func:`choose_bit_widths`, then pack each layer at its width."""
    choice = choose_bit_widths(model, config, data)
    lowbit = LowBit(
        bits=max(config.candidates),
        per_channel=config.per_channel,
        targets=tuple(choice.bits),
        layer_bits=choice.bits,
    )
    quantize_weights_(model, lowbit)
    model.dwindle_bit_widths = choice.bits
    return model


@register_technique("quantize_mixed", MixedBits, "loss-aware per-layer bit widths under a budget")
def _mixed_stage(model: nn.Module, config: MixedBits, context: StageContext) -> nn.Module:
    if context.data is None:
        raise ConfigError("quantize_mixed needs data to measure the loss increase per layer")
    out = quantize_mixed_(model, config, context.data)
    widths = ", ".join(f"{n}: {b}" for n, b in out.dwindle_bit_widths.items())
    context.note(f"quantize_mixed: bit widths chosen by loss increase: {widths}")
    return out
