"""Low-bit weights: uniform 2–8-bit, ternary (TWN), binary (BinaryConnect/XNOR), codebooks.

Each maps a float weight to integer *codes* and a per-output-channel *scale* (``codes()``),
and fake-quantises it for training (``forward``) with a straight-through gradient. The same
object serves post-training quantisation, QAT and packing, so what was trained is exactly what
is stored.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.quantization.fake_quant import QParams, check_bits, compute_qparams, qrange
from dwindle.quantization.nonuniform import assign, kmeans_codebook, log_codebook
from dwindle.quantization.observers import make_observer
from dwindle.quantization.packing import PACKED_FORMAT, PackedConv, PackedLayer, PackedLinear
from dwindle.quantization.rounding import get_rounding
from dwindle.targets import matches, select_modules

__all__ = [
    "METHOD_BITS",
    "SUPPORTED_LAYERS",
    "BinaryWeight",
    "CodebookWeight",
    "Codes",
    "LowBit",
    "TernaryWeight",
    "UniformWeight",
    "WeightQuantizer",
    "binary_activation",
    "make_weight_quantizer",
    "pack_layer",
    "quantizable_layers",
    "quantize_weights_",
]

Codes = tuple[Tensor, Tensor, Tensor | None]  # integer codes, per-channel scale, codebook


def _col(v: Tensor, w: Tensor) -> Tensor:
    return v.reshape((-1,) + (1,) * (w.dim() - 1))


class _ScaledSTE(torch.autograd.Function):
    """Forward: the quantised weight; backward: identity, or zero where ``|w| > clip``."""

    @staticmethod
    def forward(ctx: Any, w: Tensor, wq: Tensor, clip: float | None) -> Tensor:
        ctx.save_for_backward(w)
        ctx.clip = clip
        return wq

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (w,) = ctx.saved_tensors
        if ctx.clip is None:
            return grad, None, None
        return grad * (w.abs() <= ctx.clip).to(grad.dtype), None, None


class WeightQuantizer(nn.Module):
    """Base: ``codes(w)`` gives (codes, scale, codebook); ``forward(w)`` the fake-quant weight.

    ``bits`` is the storage width per code; a stored unsigned code ``u`` decodes to the integer
    ``u * step + offset``.
    """

    method = ""
    bits = 8
    step = 1
    offset = 0
    ste_clip: float | None = None

    def codes(self, w: Tensor) -> Codes:
        raise NotImplementedError

    def dequantize(self, w: Tensor) -> Tensor:
        codes, scale, codebook = self.codes(w)
        if codebook is not None:
            return codebook.to(w.dtype)[codes.long()]
        return codes.to(w.dtype) * _col(scale, w)

    def forward(self, w: Tensor) -> Tensor:
        return _ScaledSTE.apply(w, self.dequantize(w.detach()), self.ste_clip)


class UniformWeight(WeightQuantizer):
    """Symmetric ``bits``-bit grid (codes in ``±(2^(b-1) - 1)``), per channel or per tensor."""

    method = "uniform"

    def __init__(
        self,
        bits: int = 8,
        per_channel: bool = True,
        observer: str = "minmax",
        rounding: str = "nearest",
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.offset = -(2 ** (bits - 1))
        self.per_channel, self.observer, self.rounding = (
            per_channel,
            observer,
            get_rounding(rounding),
        )

    def qparams(self, w: Tensor) -> QParams:
        obs = make_observer(self.observer, axis=0 if self.per_channel else None)
        obs.update(w)  # a fresh observer: the range of the weights as they are now
        lo, hi = obs.range(self.bits, True)
        return compute_qparams(lo, hi, self.bits, True, axis=0 if self.per_channel else None)

    def codes(self, w: Tensor) -> Codes:
        qp = self.qparams(w)
        scale = qp.scale if self.per_channel else qp.scale.expand(w.shape[0])
        lo, hi = qrange(self.bits, True)
        q = torch.clamp(self.rounding(w.detach().float() / _col(scale, w)), lo, hi)
        return q, scale, None

    def forward(self, w: Tensor) -> Tensor:
        # Gradient zero where the weight was clipped by the observed range (Jacob et al. 2018).
        codes, scale, _ = self.codes(w)
        wq = codes.to(w.dtype) * _col(scale, w)
        limit = _col(scale * qrange(self.bits, True)[1], w)
        inside = (w.detach().abs() <= limit * (1 + 1e-6)).to(w.dtype)
        return wq + (w - w.detach()) * inside


class TernaryWeight(WeightQuantizer):
    """Ternary weight networks (Li & Liu 2016): ``{-α, 0, +α}`` per output channel.

    Threshold ``Δ = 0.7 · E|w|`` (their approximation of the optimal threshold) and
    ``α = E[|w| : |w| > Δ]``; codes stored in 2 bits.
    """

    method, bits, offset = "ternary", 2, -1

    def __init__(self, threshold: float = 0.7) -> None:
        super().__init__()
        self.threshold = threshold

    def codes(self, w: Tensor) -> Codes:
        flat = w.detach().float().reshape(w.shape[0], -1)
        delta = self.threshold * flat.abs().mean(1, keepdim=True)
        keep = flat.abs() > delta
        alpha = (flat.abs() * keep).sum(1) / keep.sum(1).clamp_min(1)
        codes = torch.sign(flat) * keep
        return codes.reshape(w.shape), alpha.clamp_min(1e-12), None


class BinaryWeight(WeightQuantizer):
    """Binary weights ``sign(w) · α``: BinaryConnect (Courbariaux et al. 2015) with ``α = 1``,
    or XNOR-Net's per-channel ``α = E|w|`` (Rastegari et al. 2016) when ``scaled``.

    Stored 1 bit per weight (``u ∈ {0, 1}`` means ``2u - 1``). Without scaling the gradient is
    cancelled where ``|w| > 1``, as in Hubara et al. 2016 (the latent weights are clipped).
    """

    method, bits, step, offset = "binary", 1, 2, -1

    def __init__(self, scaled: bool = True) -> None:
        super().__init__()
        self.scaled = scaled
        self.ste_clip = None if scaled else 1.0

    def codes(self, w: Tensor) -> Codes:
        flat = w.detach().float().reshape(w.shape[0], -1)
        codes = torch.where(flat >= 0, 1.0, -1.0)
        alpha = flat.abs().mean(1) if self.scaled else torch.ones(w.shape[0])
        return codes.reshape(w.shape), alpha.clamp_min(1e-12), None


class CodebookWeight(WeightQuantizer):
    """Non-uniform levels shared by the whole layer (k-means or log-scale), ``bits``-bit indices.

    The codebook is computed once, on the first call, and then kept (re-fit with ``refit()``).
    """

    def __init__(self, bits: int = 4, method: str = "kmeans") -> None:
        super().__init__()
        self.bits, self.method = bits, method
        self.register_buffer("codebook", None)

    def refit(self) -> None:
        self.codebook = None

    def codes(self, w: Tensor) -> Codes:
        if self.codebook is None:
            fit = kmeans_codebook if self.method == "kmeans" else log_codebook
            self.codebook = fit(w, self.bits)
        idx = assign(w, self.codebook)
        return idx, torch.ones(w.shape[0]), self.codebook


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)  # d/dx hardtanh: the BNN estimator


def binary_activation(x: Tensor) -> Tensor:
    """``sign(x)`` in ``{-1, +1}`` with the hard-tanh straight-through gradient (Hubara 2016)."""
    return _SignSTE.apply(x)


# --- choosing layers -----------------------------------------------------------------------

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
METHOD_BITS: dict[str, tuple[int, ...]] = {
    "uniform": (2, 3, 4, 5, 6, 7, 8),
    "ternary": (2,),
    "binary": (1,),
    "kmeans": (1, 2, 3, 4, 5, 6, 7, 8),
    "log": (2, 3, 4, 5, 6, 7, 8),
}
Method = Literal["uniform", "ternary", "binary", "kmeans", "log"]


def _has_matrix(module: nn.Module) -> bool:
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def quantizable_layers(
    model: nn.Module,
    targets: tuple[str, ...],
    exclude: tuple[str, ...],
    on_unsupported: str,
    stage: str,
    context: StageContext | None = None,
) -> list[tuple[str, nn.Module]]:
    """Layers to quantise: matching Linear/Conv1d/Conv2d modules.

    Other matching layers that hold weight matrices (Embedding, RNNs, transposed convs...) raise
    a :class:`ConfigError` naming them, or with ``on_unsupported="float"`` stay in float.
    """
    chosen = select_modules(model, targets, exclude)
    unsupported = [
        (n, m) for n, m in chosen if not isinstance(m, SUPPORTED_LAYERS) and _has_matrix(m)
    ]
    if unsupported and on_unsupported == "error":
        names = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in unsupported)
        raise ConfigError(
            f"{stage}: unsupported layer type(s): {names}. Supported: "
            f"{', '.join(t.__name__ for t in SUPPORTED_LAYERS)}. To keep them in float, add them "
            f"to exclude (e.g. exclude={[n for n, _ in unsupported]}) or set "
            "on_unsupported='float'"
        )
    if unsupported and context is not None:
        context.note(
            f"{stage}: kept in float (unsupported): {', '.join(n for n, _ in unsupported)}"
        )
    return [(n, m) for n, m in chosen if isinstance(m, SUPPORTED_LAYERS)]


def make_weight_quantizer(
    method: str = "uniform",
    bits: int = 8,
    per_channel: bool = True,
    observer: str = "minmax",
    rounding: str = "nearest",
    scaled: bool = True,
) -> WeightQuantizer:
    """The weight quantiser for ``method`` at ``bits`` (checked against :data:`METHOD_BITS`)."""
    if method not in METHOD_BITS:
        raise ConfigError(f"unknown method {method!r}; supported: {', '.join(METHOD_BITS)}")
    check_bits(bits, METHOD_BITS[method], f"bit width for method {method!r}:")
    if method == "uniform":
        return UniformWeight(bits, per_channel, observer, rounding)
    if method == "ternary":
        return TernaryWeight()
    if method == "binary":
        return BinaryWeight(scaled)
    return CodebookWeight(bits, method)


def pack_layer(
    layer: nn.Module,
    quantizer: WeightQuantizer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
) -> PackedLayer:
    """A packed copy of ``layer`` (Linear/Conv) with ``weight``/``bias`` (default: its own)."""
    w = layer.weight if weight is None else weight
    b = layer.bias if bias is None else bias
    codes, scale, codebook = quantizer.codes(w.detach())
    kw: dict[str, Any] = dict(
        codes=codes,
        scale=scale,
        bias=b,
        bits=quantizer.bits,
        step=quantizer.step,
        offset=quantizer.offset,
        codebook=codebook,
        method=quantizer.method,
    )
    if isinstance(layer, nn.Linear):
        return PackedLinear(**kw)
    return PackedConv(layer, **kw)  # type: ignore[arg-type]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted) with ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


# --- post-training low-bit weights -------------------------------------------------------------


class LowBit(TargetedConfig):
    """Post-training weight quantisation to ``bits`` bits, stored bit-packed.

    ``method``: ``uniform`` (2–8 bits, symmetric, per channel by default), ``ternary`` (2,
    TWN), ``binary`` (1; ``scaled`` adds XNOR's per-channel α), ``kmeans``/``log`` codebooks.
    ``layer_bits`` maps name patterns to a bit width overriding ``bits`` (mixed precision; the
    first matching pattern wins). Activations stay in float.
    """

    bits: int = 4
    method: Method = "uniform"
    per_channel: bool = True
    observer: Literal["minmax", "percentile", "mse"] = "minmax"
    rounding: Literal["nearest", "stochastic"] = "nearest"
    scaled: bool = True
    layer_bits: dict[str, int] = Field(default_factory=dict)
    on_unsupported: Literal["error", "float"] = "error"

    @model_validator(mode="after")
    def _bits_supported(self) -> LowBit:
        allowed = METHOD_BITS[self.method]
        for where, b in [
            ("bits", self.bits),
            *((f"layer_bits[{k!r}]", v) for k, v in self.layer_bits.items()),
        ]:
            if b not in allowed:
                raise ValueError(
                    f"{where}={b} is not supported by method {self.method!r}; supported bit "
                    f"widths: {', '.join(map(str, allowed))}"
                )
        return self

    def bits_for(self, name: str) -> int:
        for pattern, b in self.layer_bits.items():
            if matches(name, [pattern]):
                return b
        return self.bits


def quantize_weights_(
    model: nn.Module, config: LowBit, context: StageContext | None = None
) -> nn.Module:
    """Replace the targeted layers of ``model`` in place by packed low-bit layers; return it.

    The model's ``dwindle_format`` becomes ``"dwindle-packed"``, so its measured size is the
    packed file's.
    """
    layers = quantizable_layers(
        model, config.targets, config.exclude, config.on_unsupported, "quantize_lowbit", context
    )
    for name, layer in layers:
        q = make_weight_quantizer(
            config.method,
            config.bits_for(name),
            config.per_channel,
            config.observer,
            config.rounding,
            config.scaled,
        )
        set_module(model, name, pack_layer(layer, q))
    model.dwindle_format = PACKED_FORMAT
    return model


@register_technique("quantize_lowbit", LowBit, "post-training 1–8-bit weights, bit-packed")
def _lowbit_stage(model: nn.Module, config: LowBit, context: StageContext) -> nn.Module:
    out = quantize_weights_(model, config, context)
    context.note(
        f"quantize_lowbit: {config.method} {config.bits}-bit weights stored bit-packed "
        f"({PACKED_FORMAT}); activations stay float, weights are dequantised at load time"
    )
    return out
