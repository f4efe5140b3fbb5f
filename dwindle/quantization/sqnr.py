"""Signal-to-quantization-noise ratio (SQNR, dB): per weight, per layer, per model output.

``SQNR = 10·log10(‖x‖² / ‖x − x̂‖²)``; torchao's tests accept int8 quantization at > 20 dB.
Each uniform bit adds about 6 dB, so int8 per-channel weights of a healthy layer sit near 40 dB.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "fake_quant_int8_activation",
    "fake_quant_int8_weight",
    "layer_sqnr",
    "output_sqnr",
    "sqnr",
    "weight_sqnr",
]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def sqnr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """SQNR of ``estimate`` against ``reference`` in dB (``inf`` when they are equal)."""
    ref = reference.detach().double().flatten()
    noise = (ref - estimate.detach().double().flatten()).pow(2).sum().item()
    signal = ref.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def fake_quant_int8_weight(weight: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric int8 round trip (−127…127), one scale per output channel or per tensor."""
    w = weight.detach().float()
    if per_channel and w.dim() > 1:
        amax = w.abs().flatten(1).amax(dim=1).view(-1, *([1] * (w.dim() - 1)))
    else:
        amax = w.abs().amax()
    scale = (amax / 127.0).clamp(min=1e-12)
    return (w / scale).round().clamp(-127, 127) * scale


def fake_quant_int8_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Asymmetric uint8 round trip over the calibrated range ``[lo, hi]`` (0 always included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero) * scale


def weight_sqnr(model: nn.Module, *, per_channel: bool = True) -> dict[str, float]:
    """SQNR (dB) of each Linear/Conv weight after an int8 round trip, by module name."""
    return {
        name: sqnr(m.weight, fake_quant_int8_weight(m.weight, per_channel))
        for name, m in model.named_modules()
        if isinstance(m, _LAYERS)
    }


def layer_sqnr(
    model: nn.Module, inputs: torch.Tensor, *, per_channel: bool = True
) -> dict[str, float]:
    """Per-layer SQNR (dB) of each Linear/Conv output computed as static int8 would compute it.

    Each layer sees its float input from ``inputs``; its output is compared with the output
    from int8 weights and a uint8 input quantized over the range seen on ``inputs`` (the
    calibration). Layers are measured one at a time, so a low figure points at that layer.
    """
    captured: dict[str, torch.Tensor] = {}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS)}

    def hook(name: str):
        def save(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured[name] = args[0].detach()

        return save

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
            out = {}
            for name, layer in layers.items():
                x = captured[name]
                xq = fake_quant_int8_activation(x, x.min().item(), x.max().item())
                wq = fake_quant_int8_weight(layer.weight, per_channel)
                out[name] = sqnr(layer(x), _with_weight(layer, wq, xq))
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return out


def _with_weight(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight, layer.bias)
    return layer._conv_forward(x, weight, layer.bias)  # type: ignore[operator]


def output_sqnr(reference: nn.Module, model: nn.Module, inputs: torch.Tensor) -> float:
    """SQNR (dB) of ``model``'s outputs (e.g. a real int8 model) against ``reference``'s."""
    flags = [(m, m.training) for m in (*reference.modules(), *model.modules())]
    try:
        reference.eval()
        model.eval()
        with torch.no_grad():
            return sqnr(reference(inputs), model(inputs))
    finally:
        for m, flag in flags:
            m.training = flag
