"""Conversion of a trained QAT model to a packed integer model (``dwindle.quantization.packing``).

Weights are stored as bit-packed integer codes; a layer whose input lies on an int8 (or
binary) activation grid runs int8 × int8 → int32 matmuls with that grid's scale and zero point.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from dwindle.quantization.fake_quant import FakeQuantize
from dwindle.quantization.lowbit import pack_layer, set_module
from dwindle.quantization.packing import PACKED_FORMAT
from dwindle.quantization.qat_graph import input_quant
from dwindle.quantization.qat_layers import BinaryActivation, QATLayer

__all__ = ["convert_qat"]


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
        quant = input_quant(gm, node) if node is not None else None  # type: ignore[arg-type]
        if isinstance(quant, FakeQuantize) and quant.bits <= 8 and quant.scale.dim() == 0:
            packed.set_input_quant(quant.scale, quant.zero_point, unsigned=not quant.symmetric)
        elif isinstance(quant, BinaryActivation):
            packed.set_input_quant(torch.tensor(1.0), torch.tensor(0.0), unsigned=False)
        set_module(gm, name, packed)
    if isinstance(gm, fx.GraphModule):
        gm.recompile()
    gm.dwindle_format = PACKED_FORMAT
    return gm
