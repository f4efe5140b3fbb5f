"""onnxruntime backend: export to ONNX, quantize to int8 (QDQ), run in an InferenceSession.

The result is an :class:`OrtModule`, a plain ``nn.Module`` whose forward runs onnxruntime's
integer kernels (QLinearConv / QGemm / MatMulInteger after the session's QDQ fusion), so
:func:`dwindle.metrics.compare` times and sizes it beside the float model. Its artifact
(format ``"onnx-int8"``) is the quantized ``.onnx`` file itself.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dwindle._imports import require
from dwindle.errors import DwindleError
from dwindle.export import register_format
from dwindle.export.onnx_io import export_onnx
from dwindle.quantization.backends.counted import CountedModule
from dwindle.quantization.backends.onnx_compact import compact_onnx

__all__ = [
    "FLOAT_FORMAT",
    "FORMAT",
    "OrtModule",
    "compact_onnx",
    "export_float_onnx",
    "node_scopes",
    "ort_cpu_session",
    "ort_float",
    "ort_quantize_dynamic",
    "ort_quantize_static",
    "u8s8_saturates",
]

FORMAT = "onnx-int8"
FLOAT_FORMAT = "onnx-ort"
"""Artifact of a float ONNX model served by onnxruntime (:func:`ort_float`): the .onnx file."""

# Inputs of these ops that are quantization parameters, not weights (index -> role).
_QPARAM_INPUTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "QGemm": (1, 2, 4, 5, 7, 8),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "DynamicQuantizeMatMul": (2, 3),
}
_WEIGHT_OPS = {"Conv", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv", "QGemm"}


def export_float_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Export the float model, turning an export failure into advice to use torchao."""
    try:
        return export_onnx(model, example_input, path)
    except DwindleError as exc:
        raise DwindleError(
            f"cannot quantize {type(model).__name__} with backend='onnxruntime' because it does "
            f"not export to ONNX:\n{exc}\nhint: use the torchao backend, which needs no ONNX "
            "export, e.g. Int8Static(backend='torchao') or Int8Dynamic(backend='torchao')"
        ) from None


def _weight_initializers(proto: Any) -> list[np.ndarray]:
    """Initializers holding weights/biases: not scales, zero points or shape constants."""
    from onnx import numpy_helper

    qparams = {
        node.input[i]
        for node in proto.graph.node
        for i in _QPARAM_INPUTS.get(node.op_type, ())
        if i < len(node.input)
    }
    feeds_weight_op: set[str] = set()
    dq_out: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear":
            dq_out[node.output[0]] = node.input[0]
    for node in proto.graph.node:
        if node.op_type in _WEIGHT_OPS:
            for name in node.input[1:]:
                feeds_weight_op.add(dq_out.get(name, name))
    return [
        numpy_helper.to_array(init)
        for init in proto.graph.initializer
        if init.name in feeds_weight_op and init.name not in qparams
    ]


def ort_cpu_session(onnx_bytes: bytes, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads that do not spin, all graph
    optimisations on: how dwindle times onnxruntime models beside torch ones."""
    ort = require("onnxruntime", "quant", "int8 inference with onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle workers must not spin: on a few shared cores a spinning pool steals the CPU from
    # the next model timed (torch's own threads), skewing interleaved latencies.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


class OrtModule(CountedModule):
    """An ONNX model (int8, or float from :func:`ort_float`) run by onnxruntime on CPU, behind
    an ``nn.Module`` forward.

    Takes and returns float32 tensors. The session is built on first use with as many
    intra-op threads as torch uses at that moment (rebuilt if that changes), so latency
    comparisons with torch models run under the same thread budget. Inference only.
    """

    dwindle_format = FORMAT
    dwindle_backend = "onnxruntime"
    dwindle_accepts_float32 = True

    def __init__(self, onnx_bytes: bytes, *, scheme: str, flops: int | None = None) -> None:
        super().__init__()
        self.onnx_bytes = bytes(onnx_bytes)
        self.scheme = scheme
        self.flops = flops
        self._session: Any = None
        self._threads = 0
        onnx = require("onnx", "quant", "int8 quantization with onnxruntime")
        proto = onnx.load_from_string(self.onnx_bytes)
        self.input_name = proto.graph.input[0].name
        weights = _weight_initializers(proto)
        self._params = int(sum(w.size for w in weights))
        self._nonzeros = int(sum(np.count_nonzero(w) for w in weights))
        self.op_types = sorted({n.op_type for n in proto.graph.node})

    def _get_session(self) -> Any:
        threads = torch.get_num_threads()
        if self._session is None or threads != self._threads:
            self._session = ort_cpu_session(self.onnx_bytes, threads)
            self._threads = threads
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise DwindleError(
                "this is an onnxruntime model: it runs inference only and cannot be "
                "trained or fine-tuned. Put the quantize stage last in a recipe (or use QAT), "
                "and call model.eval() before running it"
            )
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        out = self._get_session().run(None, {self.input_name: feed})[0]
        return torch.from_numpy(out)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # sessions are not picklable; rebuilt on first forward
        state["_threads"] = 0
        return state

    def extra_repr(self) -> str:
        return f"scheme={self.scheme}, bytes={len(self.onnx_bytes)}, ops={','.join(self.op_types)}"


def _save_onnx_int8(model: nn.Module, path: Path) -> None:
    if not isinstance(model, OrtModule):
        raise DwindleError(f"format {FORMAT!r} saves OrtModule models, not {type(model).__name__}")
    Path(path).write_bytes(model.onnx_bytes)


register_format(FORMAT, _save_onnx_int8)
register_format(FLOAT_FORMAT, _save_onnx_int8)


def ort_float(model: nn.Module, example_input: torch.Tensor) -> OrtModule:
    """The float model exported to ONNX and served by onnxruntime (graph optimisations on:
    conv + batch-norm + activation fusion), for timing a deployment runtime beside eager torch.

    Its artifact (format ``"onnx-ort"``) is the compacted ``.onnx`` file.
    """
    from dwindle.metrics import count_flops

    with tempfile.TemporaryDirectory() as tmp:
        path = export_float_onnx(model, example_input, Path(tmp) / "model.onnx")
        flops = count_flops(model, example_input[:1])
        out = _finish(path, "fp32", flops)
    out.dwindle_format = FLOAT_FORMAT
    return out


def node_scopes(node: Any) -> set[str]:
    """The module paths the dynamo exporter recorded for ``node`` (empty for TorchScript)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return {s.strip(" '\"") for s in prop.value.strip("[]").split(",")}
    return set()


def _node_names_for(proto: Any, modules: Iterable[str]) -> list[str]:
    """ONNX nodes the exporter traced inside any of ``modules`` (by its recorded name scopes)."""
    wanted = set(modules)
    return [node.name for node in proto.graph.node if node_scopes(node) & wanted]


def _calibration_reader(calibration: torch.Tensor, input_name: str, batch: int = 32) -> Any:
    quant = require("onnxruntime.quantization", "quant", "static int8 calibration")

    class TensorReader(quant.CalibrationDataReader):
        """Feeds the calibration tensor to onnxruntime's calibrator in batches."""

        def __init__(self) -> None:
            x = calibration.detach().float().cpu()
            self._batches = iter(
                [{input_name: x[i : i + batch].numpy()} for i in range(0, len(x), batch)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    return TensorReader()


def _finish(path: Path, scheme: str, flops: int | None) -> OrtModule:
    onnx = require("onnx", "quant", "int8 quantization with onnxruntime")
    proto = compact_onnx(onnx.load(str(path)))
    return OrtModule(proto.SerializeToString(), scheme=scheme, flops=flops)


def u8s8_saturates(cpu_flags: str | None = None, machine: str | None = None) -> bool:
    """Whether onnxruntime's uint8 x int8 kernels can saturate on this CPU.

    On x86-64 without VNNI, MLAS multiplies uint8 activations by int8 weights with VPMADDUBSW,
    whose pairwise sums saturate at int16; onnxruntime's quantization guide names the remedy:
    ``reduce_range`` (7-bit weights), so no pair can overflow. VNNI (AVX512-VNNI or AVX-VNNI)
    and non-x86 CPUs accumulate in int32 and need no reduction. Unknown x86 flags count as
    saturating, the safe side. ``cpu_flags``/``machine`` override the host's (for tests).
    """
    machine = (machine or platform.machine()).lower()
    if machine not in {"x86_64", "amd64", "x86", "i686", "i386"}:
        return False
    if cpu_flags is None:
        try:
            cpu_flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return True
    flags = set(cpu_flags.split())
    return not flags & {"avx512_vnni", "avx_vnni"}


def ort_quantize_static(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    per_channel: bool,
    float_modules: Sequence[str] = (),
    method: str = "minmax",
    reduce_range: bool | None = None,
    onnx_format: str = "qdq",
    flops: int | None = None,
) -> OrtModule:
    """Static int8: uint8 activations (calibrated ranges), int8 symmetric weights.

    ``reduce_range``: quantize weights to 7 bits (still stored as int8) so the uint8 x int8
    kernels cannot saturate; None decides by the CPU (:func:`u8s8_saturates`).
    ``onnx_format``: "qdq" (Q/DQ pairs around float ops) or "qoperator" (QLinearConv etc.
    in the file: smaller, onnxruntime-specific); see :class:`~dwindle.quantization.PTQ`.
    """
    formats = {"qdq": "QDQ", "qoperator": "QOperator"}
    if onnx_format not in formats:
        raise DwindleError(f"onnx_format must be one of {sorted(formats)}, not {onnx_format!r}")
    if reduce_range is None:
        reduce_range = u8s8_saturates()
    quant = require("onnxruntime.quantization", "quant", "static int8 quantization")
    onnx = require("onnx", "quant", "static int8 quantization")
    methods = {
        "minmax": quant.CalibrationMethod.MinMax,
        "entropy": quant.CalibrationMethod.Entropy,
        "percentile": quant.CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="dwindle-ort-") as tmp:
        fp32, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        export_float_onnx(model, calibration[:2], fp32)
        # Pre-processing folds constants and infers shapes, which the quantizer relies on.
        quant.shape_inference.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        proto, traced = onnx.load(str(pre)), onnx.load(str(fp32))
        quant.quantize_static(
            str(pre),
            str(out),
            _calibration_reader(calibration, proto.graph.input[0].name),
            quant_format=getattr(quant.QuantFormat, formats[onnx_format]),
            per_channel=per_channel,
            activation_type=quant.QuantType.QUInt8,
            weight_type=quant.QuantType.QInt8,
            calibrate_method=methods[method],
            reduce_range=reduce_range,
            nodes_to_exclude=_node_names_for(traced, float_modules),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        granularity = "per-channel" if per_channel else "per-tensor"
        weights = ", 7-bit weights: no u8s8 saturation" if reduce_range else ""
        return _finish(out, f"static int8 {formats[onnx_format]} ({granularity}{weights})", flops)


def ort_quantize_dynamic(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    per_channel: bool,
    float_modules: Sequence[str] = (),
    flops: int | None = None,
) -> OrtModule:
    """Dynamic int8: int8 weights stored, activations quantized per batch at run time."""
    quant = require("onnxruntime.quantization", "quant", "dynamic int8 quantization")
    onnx = require("onnx", "quant", "dynamic int8 quantization")
    with tempfile.TemporaryDirectory(prefix="dwindle-ort-") as tmp:
        fp32, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        export_float_onnx(model, example_input[:2], fp32)
        quant.shape_inference.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        proto = onnx.load(str(fp32))
        quant.quantize_dynamic(
            str(pre),
            str(out),
            per_channel=per_channel,
            weight_type=quant.QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            nodes_to_exclude=_node_names_for(proto, float_modules),
        )
        return _finish(
            out, f"dynamic int8 ({'per-channel' if per_channel else 'per-tensor'})", flops
        )
