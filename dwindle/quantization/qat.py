"""Quantization-aware training after Jacob et al. 2018, and conversion to a packed int model.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (CVPR 2018): weights are fake-quantised before the convolution, batch norm is
folded into the weights *before* they are quantised (§3.2; training keeps batch statistics by
undoing the fold's scale, as in Krishnamoorthi 2018, Fig. 8), and activations are
fake-quantised where the integer model will quantise them: after each activation function,
after residual additions, after average pooling, at the input and at outputs not followed by
an activation. A layer or addition followed by an activation is fused with it (conv+ReLU,
add+ReLU, Jacob et al. §3.3), so it is quantised once, after the activation. ``convert_qat``
then stores weights as packed integer codes and runs int8 × int8 → int32 matmuls
(``dwindle.quantization.packing``).

With ``act_bits=1`` and ``weight_method="binary"`` the same machinery trains a BNN (Hubara,
Courbariaux et al. 2016): ``sign`` after every activation function, binary weights.

This module holds the config and the verbs; the layers are in ``qat_layers``, their placement
in the model's graph in ``qat_graph`` and the conversion in ``qat_convert``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.quantization.fake_quant import UNIFORM_BITS, FakeQuantize
from dwindle.quantization.lowbit import METHOD_BITS, quantizable_layers, set_module
from dwindle.quantization.qat_convert import convert_qat
from dwindle.quantization.qat_graph import (
    place_act_quant,
    qat_layer,
    swap_layers,
    trace_for_qat,
)
from dwindle.quantization.qat_layers import BinaryActivation, QATLayer, fold_bn
from dwindle.training import Callback, TrainConfig, TrainState, train

__all__ = [
    "QAT",
    "BinaryActivation",
    "FreezeQuantStats",
    "QATLayer",
    "convert_qat",
    "fold_bn",
    "prepare_qat",
    "qat",
]


Method = Literal["uniform", "ternary", "binary"]


class QAT(TargetedConfig):
    """Quantization-aware training, then conversion to a packed integer model.

    ``weight_bits``/``weight_method``: uniform 2–8-bit, ternary (2) or binary (1) weights.
    ``act_bits``: None keeps activations float, 1 binarises them (BNN), 2–8 quantises them
    (affine, per tensor, observed by ``act_observer``). ``fold_bn`` folds each BN into the
    layer before it. ``freeze_bn_epoch``/``freeze_observer_epoch`` = N: after N epochs (from
    epoch N + 1, epochs counting from 1; 0 = from the start) BN uses its running statistics
    and activation ranges stop moving (Jacob et al. 2018). At 2
    bits or ternary, freezing BN from epoch 0 stalls learning (the frozen statistics no longer
    fit the coarsely quantised outputs); let BN use batch statistics for the first epochs there.
    ``train`` is the QAT schedule; ``convert`` returns the packed integer model.
    ``learned_ranges``: LSQ (Esser et al. 2020): uniform weights and activations get learned
    step sizes, started at the MSE-optimal range. ``input_bits``: bits of the model input's
    quantiser and of the inputs of weighted layers kept float (default ``act_bits``; PACT and
    LSQ keep the first and last layers' inputs at 8 bits). ``add_bits``: bits of the quantiser
    on a weighted layer's output that goes into a residual addition instead of an activation
    (default ``act_bits``). PACT (Choi et al. 2018) quantises the inputs of conv/linear layers
    (its activation replaces every ReLU, the residual stream included) and leaves a residual
    branch's output before the addition unquantised; ``add_bits=8`` keeps every matmul at
    ``act_bits`` inputs while the integer model still adds 8-bit tensors. ``weight_range``
    (LSQ only): ``narrow`` codes ``±(2^(b-1) - 1)``, ``full`` LSQ's ``[-2^(b-1), 2^(b-1) - 1]``.
    """

    weight_bits: int = 8
    weight_method: Method = "uniform"
    per_channel: bool = True
    weight_observer: Literal["minmax", "percentile", "mse"] = "minmax"
    act_bits: int | None = 8
    act_observer: Literal["moving_average", "minmax", "percentile"] = "moving_average"
    rounding: Literal["nearest", "stochastic"] = "nearest"
    scaled: bool = True
    fold_bn: bool = True
    freeze_bn_epoch: int | None = None
    freeze_observer_epoch: int | None = None
    train: TrainConfig = TrainConfig(epochs=3, optimizer="adam", lr=1e-4, progress=False)
    convert: bool = True
    on_unsupported: Literal["error", "float"] = "error"
    learned_ranges: bool = False
    input_bits: int | None = None
    add_bits: int | None = None
    weight_range: Literal["narrow", "full"] = "narrow"

    @model_validator(mode="after")
    def _bits_supported(self) -> QAT:
        allowed = METHOD_BITS[self.weight_method]
        if self.weight_bits not in allowed:
            raise ValueError(
                f"weight_bits={self.weight_bits} is not supported by weight_method "
                f"{self.weight_method!r}; supported bit widths: {', '.join(map(str, allowed))}"
            )
        acts = (1, *UNIFORM_BITS)
        if self.weight_range == "full" and not self.learned_ranges:
            raise ValueError(
                "weight_range='full' is LSQ's weight grid; set learned_ranges=True, "
                "or keep weight_range='narrow'"
            )
        for field in ("input_bits", "add_bits"):
            value = getattr(self, field)
            if value is not None and value not in UNIFORM_BITS:
                raise ValueError(
                    f"{field}={value} is not supported; supported bit widths: "
                    f"{', '.join(map(str, UNIFORM_BITS))}, or None for act_bits"
                )
        if self.add_bits is not None and self.act_bits in (None, 1):
            raise ValueError(
                f"add_bits={self.add_bits} sets the bits of a layer output that enters a residual "
                f"addition, but act_bits={self.act_bits} "
                + ("keeps activations float" if self.act_bits is None else "places only sign()")
                + "; set act_bits to 2-8 or leave add_bits unset"
            )
        if self.learned_ranges and (self.weight_method != "uniform" or self.act_bits == 1):
            raise ValueError(
                "learned_ranges (LSQ) needs uniform weights and activations of 2-8 bits; "
                "set weight_method='uniform' and act_bits >= 2, or learned_ranges=False"
            )
        if self.act_bits is not None and self.act_bits not in acts:
            raise ValueError(
                f"act_bits={self.act_bits} is not supported; supported bit widths: "
                f"{', '.join(map(str, acts))} (1 = binary), or None for float activations"
            )
        return self


def prepare_qat(model: nn.Module, config: QAT, context: StageContext | None = None) -> nn.Module:
    """A new model (``model`` is untouched) with fake-quant weights, folded BN, act quantisers."""
    src = copy.deepcopy(model)
    if config.act_bits is None and not config.fold_bn:
        layers = quantizable_layers(
            src, config.targets, config.exclude, config.on_unsupported, "qat", context
        )
        for name, layer in layers:
            set_module(src, name, qat_layer(layer, config))
        src.dwindle_qat = config
        return src
    gm = trace_for_qat(src, config)
    folded = swap_layers(gm, config, context)
    if config.act_bits is not None:
        place_act_quant(gm, config)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.dwindle_qat = config
    if context is not None and folded:
        context.note(f"qat: folded {folded} batch-norm layer(s) into the preceding weights")
    return gm


def warn_frozen_bn_at_low_bits(config: QAT) -> None:
    """Warn when BN is frozen from the first epoch of a QAT at 2 bits or fewer: the statistics
    of the float model no longer fit such coarse outputs and training stalls or diverges (seen
    on the published CIFAR ResNet-20: 2-bit stalled, ternary's loss became nan)."""
    low = config.weight_bits <= 2 or config.weight_method != "uniform"
    if config.fold_bn and config.freeze_bn_epoch == 0 and low and config.train.epochs > 0:
        warnings.warn(
            f"QAT with {config.weight_bits}-bit {config.weight_method} weights and "
            "freeze_bn_epoch=0 keeps the float model's BN statistics from the first step, which "
            "often stalls or diverges at 2 bits or fewer; let BN use batch statistics for an "
            "epoch or more (freeze_bn_epoch=1 or later) or set train.grad_clip",
            UserWarning,
            stacklevel=3,
        )


class FreezeQuantStats(Callback):
    """Freezes BN statistics and activation ranges at the configured epochs; clips the latent
    weights of unscaled binary layers to [-1, 1] after every step (BinaryConnect)."""

    def __init__(self, config: QAT) -> None:
        self.config = config

    def on_epoch_begin(self, state: TrainState) -> None:
        cfg, model = self.config, state.model
        for m in model.modules():
            if isinstance(m, QATLayer) and cfg.freeze_bn_epoch is not None:
                m.bn_frozen = state.epoch > cfg.freeze_bn_epoch
            if isinstance(m, FakeQuantize) and cfg.freeze_observer_epoch is not None:
                m.observing = state.epoch <= cfg.freeze_observer_epoch

    def on_step_end(self, state: TrainState) -> None:
        if self.config.weight_method == "binary" and not self.config.scaled:
            with torch.no_grad():
                for m in state.model.modules():
                    if isinstance(m, QATLayer):
                        m.layer.weight.clamp_(-1, 1)


def qat(
    model: nn.Module,
    config: QAT,
    data: Any,
    *,
    callbacks: Sequence[Callback] = (),
    context: StageContext | None = None,
) -> nn.Module:
    """Prepare, train on ``data`` with ``config.train``, and (``convert``) convert: a new model."""
    warn_frozen_bn_at_low_bits(config)
    prepared = prepare_qat(model, config, context)
    train(prepared, data, config.train, callbacks=[FreezeQuantStats(config), *callbacks])
    return convert_qat(prepared) if config.convert else prepared


@register_technique("qat", QAT, "quantization-aware training (Jacob 2018), BN folding, BNN")
def _qat_stage(model: nn.Module, config: QAT, context: StageContext) -> nn.Module:
    if context.data is None:
        raise ConfigError(
            "qat needs training data: run it in a recipe with a data section, "
            "or call dwindle.quantization.qat(model, config, data)"
        )
    return qat(model, config, context.data, context=context)
