"""Quantization-aware training after Jacob et al. 2018, and conversion to a packed int model.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference" (CVPR 2018): weights are fake-quantised before the convolution, batch norm is
folded into the weights *before* they are quantised (§3.2; training keeps batch statistics by
undoing the fold's scale, as in Krishnamoorthi 2018, Fig. 8), and activations are
fake-quantised where the integer model will quantise them: after each activation function,
after residual additions, after average pooling, at the input and at outputs not followed by
an activation. ``convert_qat`` then stores weights as packed integer codes and runs int8 ×
int8 → int32 matmuls (``dwindle.quantization.packing``).

With ``act_bits=1`` and ``weight_method="binary"`` the same machinery trains a BNN (Hubara,
Courbariaux et al. 2016): ``sign`` after every activation function, binary weights.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import Tensor, fx, nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.quantization.fake_quant import UNIFORM_BITS, FakeQuantize
from dwindle.quantization.lowbit import (
    METHOD_BITS,
    WeightQuantizer,
    binary_activation,
    make_weight_quantizer,
    pack_layer,
    quantizable_layers,
    set_module,
)
from dwindle.quantization.lsq import LSQActivation, LSQWeight
from dwindle.quantization.packing import PACKED_FORMAT, PackedLayer
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

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_ACT_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.ELU,
    nn.Hardswish,
)
_ACT_FUNCS = {
    F.relu,
    torch.relu,
    F.relu6,
    F.hardtanh,
    F.gelu,
    F.silu,
    torch.sigmoid,
    torch.tanh,
    F.leaky_relu,
    F.elu,
}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_AVG_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_AVG_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
# Ops that keep values on their input's quantisation grid (the integer model runs them on ints).
_GRID_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_GRID_FUNCS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout}
_GRID_METHODS = {"view", "reshape", "flatten", "contiguous"}


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


Method = Literal["uniform", "ternary", "binary"]


class QAT(TargetedConfig):
    """Quantization-aware training, then conversion to a packed integer model.

    ``weight_bits``/``weight_method``: uniform 2–8-bit, ternary (2) or binary (1) weights.
    ``act_bits``: None keeps activations float, 1 binarises them (BNN), 2–8 quantises them
    (affine, per tensor, observed by ``act_observer``). ``fold_bn`` folds each BN into the
    layer before it. ``freeze_bn_epoch``/``freeze_observer_epoch``: from that epoch on BN
    uses its running statistics and activation ranges stop moving (Jacob et al. 2018).
    ``train`` is the QAT schedule; ``convert`` returns the packed integer model.
    ``learned_ranges``: LSQ (Esser et al. 2020): uniform weights and activations get learned
    step sizes, started at the MSE-optimal range. ``input_bits``: bits of the model input's
    quantiser and of the inputs of weighted layers kept float (default ``act_bits``; PACT and
    LSQ keep the first and last layers' inputs at 8 bits).
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

    @model_validator(mode="after")
    def _bits_supported(self) -> QAT:
        allowed = METHOD_BITS[self.weight_method]
        if self.weight_bits not in allowed:
            raise ValueError(
                f"weight_bits={self.weight_bits} is not supported by weight_method "
                f"{self.weight_method!r}; supported bit widths: {', '.join(map(str, allowed))}"
            )
        acts = (1, *UNIFORM_BITS)
        if self.input_bits is not None and self.input_bits not in UNIFORM_BITS:
            raise ValueError(
                f"input_bits={self.input_bits} is not supported; supported bit widths: "
                f"{', '.join(map(str, UNIFORM_BITS))}, or None for act_bits"
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


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(
            m, QATLayer | PackedLayer | FakeQuantize | BinaryActivation
        ) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, config: QAT) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python
        raise ConfigError(
            f"qat: cannot trace {type(model).__name__} with torch.fx to place activation "
            f"quantisers and fold batch norm ({type(exc).__name__}: {str(exc)[:200]}). Make "
            "forward free of data-dependent Python control flow, or pass act_bits=None and "
            "fold_bn=False for weight-only QAT by module swap"
        ) from None
    for node in graph.nodes:
        # String annotations (``from __future__ import annotations``) become globals that a
        # GraphModule cannot pickle; the types carry nothing QAT needs.
        if isinstance(node.type, str):
            node.type = None
    return fx.GraphModule(model, graph, type(model).__name__)


def _is(
    node: fx.Node, gm: fx.GraphModule, mods: tuple[type, ...], funcs: set[Any], methods: set[str]
) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), mods)
    if node.op == "call_function":
        return node.target in funcs
    return node.op == "call_method" and node.target in methods


def _is_act(node: fx.Node, gm: fx.GraphModule) -> bool:
    return _is(node, gm, _ACT_MODULES, _ACT_FUNCS, _ACT_METHODS)


def _insert_after(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> None:
    name = f"{node.name}_aq"
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new)


def _swap_layers(gm: fx.GraphModule, config: QAT, context: StageContext | None) -> int:
    chosen = dict(
        quantizable_layers(
            gm, config.targets, config.exclude, config.on_unsupported, "qat", context
        )
    )
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in chosen:
            continue
        layer = chosen[node.target]
        users = list(node.users)
        bn = None
        if config.fold_bn and len(users) == 1 and users[0].op == "call_module":
            candidate = gm.get_submodule(str(users[0].target))
            if isinstance(candidate, _BN) and candidate.track_running_stats:
                bn = candidate
                users[0].replace_all_uses_with(node)
                gm.graph.erase_node(users[0])
                gm.delete_submodule(str(users[0].target))  # it now lives inside the QATLayer
                folded += 1
        wq = _weight_quantizer(config)
        qlayer = QATLayer(layer, wq, bn)
        if isinstance(wq, LSQWeight):
            with torch.no_grad():
                wq.init_from(qlayer.folded()[0])
        set_module(gm, str(node.target), qlayer)
    return folded


def _weight_quantizer(config: QAT) -> WeightQuantizer:
    if config.learned_ranges:
        return LSQWeight(config.weight_bits, config.per_channel)
    return make_weight_quantizer(
        config.weight_method,
        config.weight_bits,
        config.per_channel,
        config.weight_observer,
        config.rounding,
        config.scaled,
    )


def _feeds_float_layer(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node``'s value reaches only weighted layers kept float (through grid ops)."""
    users = list(node.users)
    while len(users) == 1 and _is(users[0], gm, _GRID_MODULES, _GRID_FUNCS, _GRID_METHODS):
        users = list(users[0].users)
    return bool(users) and all(
        u.op == "call_module"
        and not isinstance(gm.get_submodule(str(u.target)), QATLayer)
        and any(True for _ in gm.get_submodule(str(u.target)).parameters(recurse=False))
        for u in users
    )


def _place_act_quant(gm: fx.GraphModule, config: QAT) -> None:
    bits = config.act_bits
    for node in list(gm.graph.nodes):
        if bits == 1:
            if _is_act(node, gm):
                _insert_after(gm, node, BinaryActivation())
            continue
        after = node.op == "placeholder" or _is_act(node, gm)
        after |= _is(node, gm, (), _ADD_FUNCS, {"add", "add_"})
        after |= _is(node, gm, _AVG_MODULES, _AVG_FUNCS, set())
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), QATLayer):
            after |= not node.users or not all(_is_act(u, gm) for u in node.users)
        if after:
            edge = node.op == "placeholder" or _feeds_float_layer(node, gm)
            b = (config.input_bits or bits) if edge else bits
            fq: FakeQuantize = (
                LSQActivation(b)  # type: ignore[arg-type]
                if config.learned_ranges
                else FakeQuantize(b, symmetric=False, observer=config.act_observer)  # type: ignore[arg-type]
            )
            _insert_after(gm, node, fq)


def prepare_qat(model: nn.Module, config: QAT, context: StageContext | None = None) -> nn.Module:
    """A new model (``model`` is untouched) with fake-quant weights, folded BN, act quantisers."""
    src = copy.deepcopy(model)
    if config.act_bits is None and not config.fold_bn:
        layers = quantizable_layers(
            src, config.targets, config.exclude, config.on_unsupported, "qat", context
        )
        for name, layer in layers:
            wq = make_weight_quantizer(
                config.weight_method,
                config.weight_bits,
                config.per_channel,
                config.weight_observer,
                config.rounding,
                config.scaled,
            )
            set_module(src, name, QATLayer(layer, wq))
        src.dwindle_qat = config
        return src
    gm = _trace(src, config)
    folded = _swap_layers(gm, config, context)
    if config.act_bits is not None:
        _place_act_quant(gm, config)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.dwindle_qat = config
    if context is not None and folded:
        context.note(f"qat: folded {folded} batch-norm layer(s) into the preceding weights")
    return gm


def _input_quant(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The activation quantiser whose grid the layer's input lies on, through grid-keeping ops."""
    src = node.args[0] if node.args else None
    while isinstance(src, fx.Node):
        if src.op == "call_module":
            mod = gm.get_submodule(str(src.target))
            if isinstance(mod, FakeQuantize | BinaryActivation):
                return mod
        if not _is(src, gm, _GRID_MODULES, _GRID_FUNCS, _GRID_METHODS):
            return None
        src = src.args[0] if src.args else None
    return None


def convert_qat(qat_model: nn.Module) -> nn.Module:
    """A new packed integer model from a QAT model: codes bit-packed, int8 matmuls where the
    input is on an int8 grid, activation ranges frozen."""
    gm = copy.deepcopy(qat_model).eval()
    for module in gm.modules():
        if isinstance(module, FakeQuantize):
            module.observing = False
    graph_nodes = list(gm.graph.nodes) if isinstance(gm, fx.GraphModule) else []
    by_name = {str(n.target): n for n in graph_nodes if n.op == "call_module"}
    for name, module in list(gm.named_modules()):
        if not isinstance(module, QATLayer):
            continue
        with torch.no_grad():
            w, b = module.folded()
            packed = pack_layer(module.layer, module.weight_quant, w, b)
        node = by_name.get(name)
        quant = _input_quant(gm, node) if node is not None else None  # type: ignore[arg-type]
        if isinstance(quant, FakeQuantize) and quant.bits <= 8 and quant.scale.dim() == 0:
            packed.set_input_quant(quant.scale, quant.zero_point, unsigned=not quant.symmetric)
        elif isinstance(quant, BinaryActivation):
            packed.set_input_quant(torch.tensor(1.0), torch.tensor(0.0), unsigned=False)
        set_module(gm, name, packed)
    if isinstance(gm, fx.GraphModule):
        gm.recompile()
    gm.dwindle_format = PACKED_FORMAT
    return gm


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
