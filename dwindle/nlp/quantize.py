"""int8 for text encoders: onnxruntime (dynamic or static, per-channel) and torchao.

onnxruntime: the encoder is exported with dynamic batch and sequence, optionally fused by
onnxruntime's transformer optimizer (``onnxruntime.transformers.optimizer``, model type
"bert": LayerNorm, GELU and bias fusions), then its weight MatMuls are quantized to int8 —
dynamically (activations quantized per batch at run time) or statically (QDQ with activation
ranges calibrated on real sentences). Attention's activation × activation MatMuls stay float.
torchao: ``quantize_(..., Int8DynamicActivationInt8WeightConfig())`` on the Linear layers.
inductor: torchao's pt2e X86 quantizer, compiled by torch.compile with freezing (oneDNN int8
linears and fused float ops; :mod:`dwindle.nlp.quantize_inductor`), the fastest on x86 CPUs.
Both results keep the tokenizer, so :func:`dwindle.nlp.stsb_spearman` evaluates them as is.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from dwindle._imports import require
from dwindle.config import Config
from dwindle.errors import ConfigError
from dwindle.export import register_format
from dwindle.metrics.counts import count_nonzeros, count_params
from dwindle.nlp.encoder import tokenize
from dwindle.nlp.export import export_text_onnx
from dwindle.nlp.heads import count_heads
from dwindle.quantization.backends.ort import OrtModule, compact_onnx, u8s8_saturates
from dwindle.targets import select_modules

__all__ = ["OrtTextModule", "TextInt8", "TorchaoTextModule", "fuse_bert_onnx", "quantize_text"]

TORCHAO_FORMAT = "torchao-state-dict"


class TextInt8(Config):
    """int8 quantization of a text encoder's linear layers (recipe stage ``quantize_text``).

    ``backend``: "onnxruntime", "torchao" (eager ``quantize_``, dynamic only) or "inductor"
    (torchao pt2e + torch.compile; needs a C++ compiler). ``mode``: "dynamic" or "static"
    (onnxruntime and inductor; calibrated on ``calibration_samples`` sentences).
    ``per_channel``: one weight scale per output channel. ``fuse``: run onnxruntime's BERT
    graph fusions first.
    ``reduce_range``: 7-bit weights (None: on for static on x86 CPUs without VNNI, where
    uint8 × int8 kernels can saturate). ``exporter``: "torchscript" (eager attention) gives
    graphs onnxruntime's optimizer fuses into its Attention op, which the dynamo exporter's
    graphs are not yet matched to.
    """

    backend: Literal["onnxruntime", "torchao", "inductor"] = "onnxruntime"
    mode: Literal["dynamic", "static"] = "dynamic"
    per_channel: bool = True
    fuse: bool = True
    reduce_range: bool | None = None
    calibration_samples: int = Field(256, ge=1, le=100_000)
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    exclude: tuple[str, ...] = ()


def _text_attrs(dst: nn.Module, src: nn.Module) -> None:
    dst.tokenizer = src.tokenizer
    dst.max_seq_length = int(src.max_seq_length)
    dst.pad_token_id = int(getattr(src, "pad_token_id", 0))


class OrtTextModule(OrtModule):
    """An onnxruntime encoder: int64 token ids in, float32 embeddings out (inference only)."""

    def __init__(self, onnx_bytes: bytes, source: nn.Module, *, scheme: str) -> None:
        super().__init__(onnx_bytes, scheme=scheme)
        _text_attrs(self, source)
        # Counts of the float model: int8 storage changes bytes, not how many weights there are
        # (the base class counts only MatMul/Gemm initializers, missing embedding tables).
        self._params, self._nonzeros = count_params(source), count_nonzeros(source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.training and torch.is_grad_enabled():
            return super().forward(x)  # raises the inference-only error
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.int64)
        out = self._get_session().run(None, {self.input_name: feed})[0]
        return torch.from_numpy(out)


class TorchaoTextModule(nn.Module):
    """A text encoder whose Linear layers run torchao int8 dynamic kernels (eager)."""

    dwindle_format = TORCHAO_FORMAT
    dwindle_backend = "torchao"

    def __init__(self, inner: nn.Module, source: nn.Module, *, scheme: str) -> None:
        super().__init__()
        self.inner = inner
        self.scheme = scheme
        _text_attrs(self, source)
        self._counts = (count_params(source), count_nonzeros(source))

    def dwindle_param_count(self) -> int:
        return self._counts[0]

    def dwindle_nonzero_count(self) -> int:
        return self._counts[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


register_format(
    TORCHAO_FORMAT,
    lambda m, p: torch.save(m.inner.state_dict(), p),  # type: ignore[union-attr]
)


def fuse_bert_onnx(src: Path, dst: Path, *, num_heads: int = 0, hidden_size: int = 0) -> Path:
    """onnxruntime's transformer optimizer (model type "bert") from ``src`` to ``dst``."""
    require("onnxruntime", "onnx", "ONNX graph fusion")
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the optimizer warns about shape inference
    try:
        opt = optimize_model(
            str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size
        )
        opt.save_model_to_file(str(dst))
    finally:
        logging.getLogger().setLevel(level)
    return dst


def _export_torchscript(model: nn.Module, path: Path) -> Path:
    """TorchScript-exporter ONNX with eager attention (the graph onnxruntime's BERT fusion
    recognises); dynamic batch and sequence."""
    from dwindle.export.onnx_io import _quiet

    clone = copy.deepcopy(model).eval()
    clone.backbone.config._attn_implementation = "eager"
    example = torch.full((2, 16), 5, dtype=torch.long)
    example[1, 10:] = int(getattr(model, "pad_token_id", 0))
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            clone,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
        )
    return path


def float_linears(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of ``model``'s Linear layers matching ``patterns`` (an error if one matches none)."""
    if not patterns:
        return []
    return [name for name, _ in select_modules(model, tuple(patterns), (), (nn.Linear,))]


def _module_scope(node: Any) -> str:
    """The module path a TorchScript-exported node was traced in ("/a/b.0/c/MatMul" -> a.b.0.c)."""
    return ".".join(node.name.strip("/").split("/")[:-1])


def _nodes_of(traced: Any, fused: Any, modules: Sequence[str]) -> list[str]:
    """Weight MatMul/Gemm nodes of ``fused`` traced inside each of ``modules``, found in the
    exported graph ``traced`` (the fusion passes drop the scopes but keep unfused nodes' names)
    by the dynamo exporter's recorded name scopes or the TorchScript exporter's node names."""
    from dwindle.quantization.backends.ort import node_scopes

    kept = {n.name for n in fused.graph.node if n.op_type in ("MatMul", "Gemm")}
    by_module: dict[str, list[str]] = {m: [] for m in modules}
    for node in traced.graph.node:  # one pass over the graph for every module
        if node.name not in kept:
            continue
        for scope in node_scopes(node) | {_module_scope(node)}:
            if scope in by_module:
                by_module[scope].append(node.name)
    found = [name for m in modules for name in dict.fromkeys(by_module[m])]
    missing = [m for m in modules if not by_module[m]]
    if missing:
        raise ConfigError(
            f"exclude: no MatMul of the ONNX graph comes from {missing[:3]}; with fuse=True the "
            "query/key/value projections are one Attention op and cannot stay float alone: "
            "set fuse=False, or exclude other layers"
        )
    return found


def _float_matmuls(path: Path) -> list[str]:
    """Names of MatMul nodes with no weight initializer (attention scores and context)."""
    onnx = require("onnx", "onnx", "int8 quantization with onnxruntime")
    proto = onnx.load(str(path))
    inits = {i.name for i in proto.graph.initializer}
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "MatMul" and not any(i in inits for i in n.input)
    ]


def _calibration(model: nn.Module, sentences: Sequence[str], input_name: str = "input_ids") -> Any:
    quant = require("onnxruntime.quantization", "onnx", "static int8 calibration")
    batches = [
        {
            input_name: tokenize(
                model.tokenizer, list(sentences[i : i + 32]), max_length=model.max_seq_length
            ).numpy()
        }
        for i in range(0, len(sentences), 32)
    ]

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Reader()


def _ort(model: nn.Module, cfg: TextInt8, calibration: Sequence[str] | None) -> OrtTextModule:
    quant = require("onnxruntime.quantization", "onnx", "int8 quantization with onnxruntime")
    onnx = require("onnx", "onnx", "int8 quantization with onnxruntime")
    floats = float_linears(model, cfg.exclude)  # a pattern matching nothing fails before export
    with tempfile.TemporaryDirectory(prefix="dwindle-text-int8-") as tmp:
        if cfg.exporter == "dynamo":
            src = export_text_onnx(model, Path(tmp) / "fp32.onnx")
        else:
            src = _export_torchscript(model, Path(tmp) / "fp32.onnx")
        traced = onnx.load(str(src))
        if cfg.fuse:
            heads = set(count_heads(model))
            src = fuse_bert_onnx(
                src,
                Path(tmp) / "fused.onnx",
                num_heads=heads.pop() if len(heads) == 1 else 0,
                hidden_size=int(getattr(model.backbone.config, "hidden_size", 0)),
            )
        proto = onnx.load(str(src))
        for i, node in enumerate(proto.graph.node):
            node.name = node.name or f"node_{i}"  # exclusion lists need names
        onnx.save(proto, str(src))
        out = Path(tmp) / "int8.onnx"
        keep = _float_matmuls(src) + _nodes_of(traced, proto, floats)
        granularity = "per-channel" if cfg.per_channel else "per-tensor"
        if cfg.mode == "dynamic":
            quant.quantize_dynamic(
                str(src),
                str(out),
                per_channel=cfg.per_channel,
                reduce_range=bool(cfg.reduce_range),
                weight_type=quant.QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                nodes_to_exclude=keep,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
            scheme = f"onnxruntime dynamic int8 ({granularity})"
        else:
            reduce = u8s8_saturates() if cfg.reduce_range is None else cfg.reduce_range
            quant.quantize_static(
                str(src),
                str(out),
                _calibration(model, list(calibration or [])[: cfg.calibration_samples]),
                quant_format=quant.QuantFormat.QDQ,
                per_channel=cfg.per_channel,
                reduce_range=reduce,
                activation_type=quant.QuantType.QUInt8,
                weight_type=quant.QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
                nodes_to_exclude=keep,
            )
            scheme = f"onnxruntime static int8 QDQ ({granularity}" + (
                ", 7-bit weights)" if reduce else ")"
            )
        scheme += ", fused graph" if cfg.fuse else ""
        scheme += ", TorchScript export" if cfg.exporter == "torchscript" else ""
        scheme += f", float: {', '.join(floats)}" if floats else ""
        data = compact_onnx(onnx.load(str(out))).SerializeToString()
    return OrtTextModule(data, model, scheme=scheme)


def _torchao(model: nn.Module, floats: Sequence[str] = ()) -> TorchaoTextModule:
    require("torchao", "quant", "int8 quantization with torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    inner = copy.deepcopy(model).eval()
    skip = set(floats)

    def is_target(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and fqn not in skip

    quantize_(inner, Int8DynamicActivationInt8WeightConfig(), filter_fn=is_target)
    scheme = "torchao int8 dynamic (Linear)" + (f", float: {', '.join(floats)}" if floats else "")
    return TorchaoTextModule(inner, model, scheme=scheme)


def quantize_text(
    model: nn.Module, config: TextInt8 | None = None, *, calibration: Sequence[str] | None = None
) -> nn.Module:
    """A new int8 encoder (``model`` is untouched); static mode needs ``calibration`` sentences."""
    cfg = config or TextInt8()
    if getattr(model, "tokenizer", None) is None:
        raise ConfigError(
            "quantize_text takes a text encoder from dwindle.nlp.load_encoder (token ids in, "
            f"embeddings out); {type(model).__name__} carries no tokenizer"
        )
    if cfg.mode == "static" and not calibration:
        raise ConfigError(
            "static int8 needs calibration sentences to choose activation ranges: pass "
            "calibration=[...] (e.g. 256 STS-B train sentences), or use mode='dynamic'"
        )
    if cfg.backend == "inductor":
        if not cfg.per_channel:
            raise ConfigError(
                "the inductor backend (torchao's X86 quantizer) quantizes weights per channel "
                "only; set per_channel=True, or use backend='onnxruntime' for per-tensor weights"
            )
        from dwindle.nlp.quantize_inductor import inductor_int8

        texts = list(calibration or [])[: cfg.calibration_samples]
        return inductor_int8(
            model,
            dynamic=cfg.mode == "dynamic",
            calibration=texts,
            float_modules=float_linears(model, cfg.exclude),
        ).eval()
    if cfg.backend == "torchao":
        if cfg.mode == "static":
            raise ConfigError("the torchao text backend is dynamic only; use mode='dynamic'")
        return _torchao(model, float_linears(model, cfg.exclude))
    return _ort(model, cfg, calibration).eval()
