"""torchao backend: pt2e static int8 (X86InductorQuantizer) and int8 dynamic via ``quantize_``.

Static: ``torch.export`` → ``prepare_pt2e`` → calibrate → ``convert_pt2e`` gives a graph of
int8 weights with quantize/dequantize ops; lowering it with inductor's freezing passes (as
``torchao.quantization.pt2e.lowering.lower_pt2e_quantized_to_x86`` does, but keeping the batch
dimension dynamic) fuses each dq→conv/linear→q into oneDNN ``qconv_pointwise`` /
``qlinear_pointwise`` integer kernels that run eagerly, without ``torch.compile``.

The artifact (format ``"torchao-pt2"``) is the ``torch.export`` archive of the converted int8
program; the lowered graph holds opaque oneDNN tensors and is rebuilt from it after unpickling.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle._imports import require
from dwindle.errors import DwindleError
from dwindle.export import register_format
from dwindle.quantization.backends.counted import CountedModule

__all__ = [
    "FORMAT",
    "TorchaoModule",
    "pt2e_x86_convert",
    "torchao_quantize_dynamic",
    "torchao_quantize_static",
]

FORMAT = "torchao-pt2"

_BATCH = "batch"


def _dynamic_batch(x: torch.Tensor) -> tuple[dict[int, Any], ...]:
    return ({0: torch.export.Dim(_BATCH)},)


def _traceable(x: torch.Tensor) -> torch.Tensor:
    # torch.export specialises a size-1 dimension to a constant: trace with a batch of 2.
    # clone: the archive stores sample inputs, and a slice would drag its whole storage along.
    return (x[:2] if len(x) >= 2 else x.repeat(2, *([1] * (x.dim() - 1)))).detach().clone()


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """convert_pt2e keeps the float weights next to the int8 copies it uses; drop them."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_parameters()] + [n for n, _ in gm.named_buffers()]:
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        owner._parameters.pop(attr, None)
        owner._buffers.pop(attr, None)
    gm.delete_all_unused_submodules()


def _lower_x86(program: Any, example: torch.Tensor) -> nn.Module:
    """oneDNN integer kernels for a converted pt2e program, with a dynamic batch dimension."""
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes

    table = torch.export.default_decompositions()
    for op in list(table):
        if not torch._export.utils._is_cia_op(op):  # keep prim ops: we are post-autograd
            del table[op]
    # A batch of 2 gets baked into the lowered reshapes (seen with torch 2.13); 32 does not.
    x = example[:1].repeat(32, *([1] * (example.dim() - 1)))
    with torch.no_grad():
        lowered = program.run_decompositions(table).module()
        aten = torch.ops.aten
        graph = lowered.graph
        for node in list(graph.nodes):
            if node.target == aten.t.default:  # the x86 patterns expect permute, not t
                with graph.inserting_before(node):
                    perm = graph.call_function(aten.permute.default, args=(node.args[0], [1, 0]))
                node.replace_all_uses_with(perm)
                graph.erase_node(node)
        lowered.recompile()
        freezing_passes(lowered, (x,))
        constant_fold(lowered)
        # oneDNN convs return channels-last tensors, which a later view cannot reinterpret.
        for node in lowered.graph.nodes:
            if node.target == aten.view.default:
                node.target = aten.reshape.default
        lowered.recompile()
    # freezing_passes records the example's batch in the input check export installed; the
    # graph itself reads the batch size at run time (sym_size), so that check is stale.
    lowered._forward_pre_hooks.clear()
    return lowered


class TorchaoModule(CountedModule):
    """An int8 model quantized by torchao, runnable eagerly on CPU; inference only.

    ``program`` is the serialised ``torch.export`` archive of the int8 program (the artifact).
    For static quantization the oneDNN-lowered graph is built from it on first use.
    """

    dwindle_format = FORMAT
    dwindle_backend = "torchao"
    dwindle_accepts_float32 = True

    def __init__(
        self, program: bytes, example: torch.Tensor, *, scheme: str, flops: int | None
    ) -> None:
        super().__init__()
        self.program = bytes(program)
        self.example = example[:1].detach().clone()
        self.scheme = scheme
        self.flops = flops
        self._runner: Any = None
        weights = [
            t.dequantize() if hasattr(t, "dequantize") and type(t) is not torch.Tensor else t
            for name, t in torch.export.load(io.BytesIO(self.program)).state_dict.items()
            if t.dim() >= 1 and not name.rsplit(".", 1)[-1].startswith(("_scale", "_zero_point"))
        ]
        self._params = int(sum(t.numel() for t in weights))
        self._nonzeros = int(sum(int((t != 0).sum()) for t in weights))

    def _get_runner(self) -> nn.Module:
        if self._runner is None:
            program = torch.export.load(io.BytesIO(self.program))
            static = "static" in self.scheme
            runner = _lower_x86(program, self.example) if static else program.module()
            # Not a registered child: exported graphs refuse .train()/.eval(), which measuring
            # calls on every submodule; this one is inference-only anyway.
            object.__setattr__(self, "_runner", runner)
        return self._runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise DwindleError(
                "this is an int8 torchao model: it runs inference only and cannot be trained "
                "or fine-tuned. Put the quantize stage last in a recipe (or use QAT)"
            )
        with torch.no_grad():
            return self._get_runner()(x.float())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_runner"] = None  # oneDNN packed weights do not pickle; rebuilt on first use
        return state

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bytes={len(self.program)}"


def _save_pt2(model: nn.Module, path: Path) -> None:
    if not isinstance(model, TorchaoModule):
        raise DwindleError(
            f"format {FORMAT!r} saves TorchaoModule models, not {type(model).__name__}"
        )
    Path(path).write_bytes(model.program)


register_format(FORMAT, _save_pt2)


def _serialise(program: nn.Module, example: torch.Tensor) -> bytes:
    x = _traceable(example)
    exported = torch.export.export(program, (x,), dynamic_shapes=_dynamic_batch(x), strict=False)
    buf = io.BytesIO()
    torch.export.save(exported, buf)
    return buf.getvalue()


def pt2e_x86_convert(
    model: nn.Module,
    example: torch.Tensor,
    dynamic_shapes: Any,
    qconfig: Any,
    calibrate: Callable[[nn.Module], None],
    *,
    float_modules: Sequence[str] = (),
    purpose: str,
) -> torch.fx.GraphModule:
    """A copy of ``model`` through torchao pt2e with the X86 Inductor quantizer: exported,
    annotated with ``qconfig`` (``float_modules`` left float), run by ``calibrate`` and
    converted, without the float weights convert_pt2e leaves beside their int8 copies."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    float_model = copy.deepcopy(model).eval()
    with torch.no_grad():
        try:
            graph = torch.export.export(
                float_model, (example,), dynamic_shapes=dynamic_shapes, strict=False
            ).module()
        except Exception as exc:  # torch.export raises many unrelated types
            raise DwindleError(
                f"torch.export cannot trace {type(model).__name__} for {purpose}: "
                f"{str(exc).splitlines()[0][:300]}; try backend='onnxruntime'"
            ) from None
        quantizer = X86InductorQuantizer()
        quantizer.set_global(qconfig)
        for name in float_modules:
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_pt2e(graph, quantizer)
        calibrate(prepared)
        converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    return converted


def torchao_quantize_static(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    per_channel: bool,
    float_modules: Sequence[str] = (),
    reduce_range: bool | None = None,
    flops: int | None = None,
    batch: int = 32,
) -> TorchaoModule:
    """pt2e static int8 with the X86 Inductor quantizer: uint8 activations, int8 weights.

    ``reduce_range``: 7-bit activations (torchao's advice for CPUs without VNNI, whose uint8 x
    int8 kernels saturate int16 pair sums); None decides by the CPU.
    """
    from dwindle.quantization.backends.ort import u8s8_saturates

    if reduce_range is None:
        reduce_range = u8s8_saturates()
    require("torchao", "quant", "int8 quantization with torchao")
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        get_default_x86_inductor_quantization_config,
    )

    if not per_channel:
        raise DwindleError(
            "the torchao X86 Inductor quantizer supports per-channel int8 weights only; "
            "pass per_channel=True, or backend='onnxruntime' for per-tensor weights"
        )
    x = _traceable(calibration)

    def calibrate(prepared: nn.Module) -> None:
        for i in range(0, len(calibration), batch):
            prepared(calibration[i : i + batch].float())

    converted = pt2e_x86_convert(
        model,
        x,
        _dynamic_batch(x),
        get_default_x86_inductor_quantization_config(reduce_range=reduce_range),
        calibrate,
        float_modules=float_modules,
        purpose="torchao quantization",
    )
    program = _serialise(converted, calibration)
    scheme = "static int8 pt2e x86" + (", 7-bit activations" if reduce_range else "")
    return TorchaoModule(program, calibration, scheme=scheme, flops=flops)


def torchao_quantize_dynamic(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    float_modules: Sequence[str] = (),
    flops: int | None = None,
) -> TorchaoModule:
    """``quantize_(model, Int8DynamicActivationInt8WeightConfig())`` on the Linear layers."""
    require("torchao", "quant", "int8 quantization with torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model).eval()
    skip = set(float_modules)

    def is_target(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and fqn not in skip

    quantize_(quantized, Int8DynamicActivationInt8WeightConfig(), filter_fn=is_target)
    program = _serialise(quantized, example_input)
    return TorchaoModule(program, example_input, scheme="dynamic int8 (Linear)", flops=flops)
