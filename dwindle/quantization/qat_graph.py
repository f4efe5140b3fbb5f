"""Where QAT puts its pieces in a torch.fx graph of the model.

Weighted layers become ``QATLayer``s with the batch norm that follows them folded in; activation
quantisers go where the integer model will quantise (after activation functions, residual
additions, average pooling, at the input and after layers not followed by an activation); and
``input_quant`` finds, for conversion, the quantiser whose grid a layer's input lies on.
"""

from __future__ import annotations

import operator
import warnings
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from dwindle.config import StageContext
from dwindle.errors import ConfigError
from dwindle.quantization.fake_quant import FakeQuantize
from dwindle.quantization.lowbit import (
    WeightQuantizer,
    make_weight_quantizer,
    quantizable_layers,
    set_module,
)
from dwindle.quantization.lsq import LSQActivation, LSQWeight
from dwindle.quantization.packing import PackedLayer
from dwindle.quantization.qat_layers import BinaryActivation, QATLayer

if TYPE_CHECKING:  # qat.py imports this module
    from dwindle.quantization.qat import QAT

__all__ = [
    "input_quant",
    "place_act_quant",
    "qat_layer",
    "swap_layers",
    "trace_for_qat",
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
_ADD_METHODS = {"add", "add_"}
_AVG_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_AVG_FUNCS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
# Ops that keep values on their input's quantisation grid (the integer model runs them on ints).
_GRID_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_GRID_FUNCS = {torch.flatten, F.max_pool1d, F.max_pool2d, F.dropout}
_GRID_METHODS = {"view", "reshape", "flatten", "contiguous"}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(
            m, QATLayer | PackedLayer | FakeQuantize | BinaryActivation
        ) or super().is_leaf_module(m, qualname)


def trace_for_qat(model: nn.Module, config: QAT) -> fx.GraphModule:
    """``model`` as a GraphModule whose QAT pieces stay leaves; a ConfigError if untraceable."""
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


def swap_layers(gm: fx.GraphModule, config: QAT, context: StageContext | None) -> int:
    """Replace the targeted layers by ``QATLayer``s, folding a following BN; the folds made."""
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
        set_module(gm, str(node.target), qat_layer(layer, config, bn))
    return folded


def qat_layer(layer: nn.Module, config: QAT, bn: nn.Module | None = None) -> QATLayer:
    """``layer`` (with ``bn`` folded in, if given) with fake-quant weights: LSQ's learned step,
    started from the (folded) weights, or the range ``config.weight_observer`` observes."""
    wq: WeightQuantizer
    if config.learned_ranges:
        wq = LSQWeight(config.weight_bits, config.per_channel, config.weight_range == "full")
    else:
        wq = make_weight_quantizer(
            config.weight_method,
            config.weight_bits,
            config.per_channel,
            config.weight_observer,
            config.rounding,
            config.scaled,
        )
    qlayer = QATLayer(layer, wq, bn)
    if isinstance(wq, LSQWeight):
        with torch.no_grad():
            wq.init_from(qlayer.folded()[0])
    return qlayer


def _users_past_grid_ops(node: fx.Node, gm: fx.GraphModule) -> list[fx.Node]:
    """The users of ``node``'s value, looking through a chain of grid-keeping ops."""
    users = list(node.users)
    while len(users) == 1 and _is(users[0], gm, _GRID_MODULES, _GRID_FUNCS, _GRID_METHODS):
        users = list(users[0].users)
    return users


def _feeds_float_layer(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node``'s value reaches only weighted layers kept float (through grid ops)."""
    users = _users_past_grid_ops(node, gm)
    return bool(users) and all(
        u.op == "call_module"
        and not isinstance(gm.get_submodule(str(u.target)), QATLayer)
        and any(True for _ in gm.get_submodule(str(u.target)).parameters(recurse=False))
        for u in users
    )


def _is_residual_add(node: fx.Node, gm: fx.GraphModule) -> bool:
    """An addition of two computed tensors (not of a tensor and a parameter or constant)."""
    if not _is(node, gm, (), _ADD_FUNCS, _ADD_METHODS):
        return False
    operands = [a for a in node.args if isinstance(a, fx.Node)]
    return len(operands) == 2 and all(a.op != "get_attr" for a in operands)


def _is_branch_output(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` is a weighted layer's output that goes only into residual additions
    (through grid-keeping ops such as dropout or a reshape)."""
    if node.op != "call_module" or not isinstance(gm.get_submodule(str(node.target)), QATLayer):
        return False
    users = _users_past_grid_ops(node, gm)
    return bool(users) and all(_is_residual_add(u, gm) for u in users)


def place_act_quant(gm: fx.GraphModule, config: QAT) -> None:
    """Insert activation quantisers (``sign`` for ``act_bits=1``) where the int model has them."""
    bits = config.act_bits
    moved = 0
    for node in list(gm.graph.nodes):
        if bits == 1:
            if _is_act(node, gm):
                _insert_after(gm, node, BinaryActivation())
            continue
        # An op whose every user is an activation function is fused with it at inference
        # (conv+ReLU, add+ReLU): one quantiser, after the activation.
        fused = bool(node.users) and all(_is_act(u, gm) for u in node.users)
        after = node.op == "placeholder" or _is_act(node, gm)
        after |= _is(node, gm, (), _ADD_FUNCS, _ADD_METHODS) and not fused
        after |= _is(node, gm, _AVG_MODULES, _AVG_FUNCS, set())
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), QATLayer):
            after |= not fused
        if after:
            edge = node.op == "placeholder" or _feeds_float_layer(node, gm)
            b = (config.input_bits or bits) if edge else bits
            if config.add_bits is not None and _is_branch_output(node, gm):
                b, moved = config.add_bits, moved + 1
            fq: FakeQuantize = (
                LSQActivation(b)  # type: ignore[arg-type]
                if config.learned_ranges
                else FakeQuantize(b, symmetric=False, observer=config.act_observer)  # type: ignore[arg-type]
            )
            _insert_after(gm, node, fq)
    if config.add_bits is not None and bits != 1 and not moved:
        warnings.warn(
            f"qat: add_bits={config.add_bits} changed no quantiser: no quantised layer's output "
            "goes straight into a residual addition in this model (a batch norm between them "
            "counts as a layer; set fold_bn=True to fold it)",
            UserWarning,
            stacklevel=3,
        )


def input_quant(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
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
