"""Post-training int8 quantization that runs real integer kernels on CPU.

``quantize(model, Int8Static(...), calibration=data.calib(256))`` returns a NEW model (the
input is never changed) backed by onnxruntime (quantized ONNX, QDQ format, fused into
QLinearConv/QGemm by the session) or by torchao (pt2e + X86InductorQuantizer lowered to oneDNN
int8 kernels for static; ``Int8DynamicActivationInt8WeightConfig`` for dynamic). Weights are
symmetric int8, per output channel by default; static activations are uint8 with ranges from
the calibration inputs (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference").

The result is inference-only: nothing after a quantize stage can train it.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.targets import matches, select_modules

__all__ = ["PTQ", "Int8Dynamic", "Int8Static", "float_layers", "quantize"]

# Layers the int8 backends turn into integer kernels.
QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Layers with weights that need no int8 kernel: folded into the previous conv, or kept float.
_FOLDED_OR_FLOAT = (
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.PReLU,
    nn.Identity,
)


class PTQ(TargetedConfig):
    """Post-training int8 quantization (recipe stage ``quantize``).

    ``mode``: "static" (int8 weights and activations; needs calibration inputs) or "dynamic"
    (int8 weights, activations quantized per batch at run time). ``backend``: "onnxruntime" or
    "torchao". ``per_channel``: one weight scale per output channel. ``calibration_samples``:
    how many training inputs a recipe stage calibrates on. ``method``: how onnxruntime turns
    calibration activations into ranges. ``reduce_range`` (static): 7-bit weights (onnxruntime)
    or activations (torchao) in 8-bit storage, so uint8 x int8 kernels cannot saturate their
    int16 pair sums; None (the default) turns it on for x86 CPUs without VNNI, where both
    backends' kernels saturate. ``onnx_format`` (static, onnxruntime): "qdq" writes
    Quantize/DequantizeLinear pairs around float ops (portable to other ONNX runtimes;
    onnxruntime fuses them into integer kernels when it loads the file); "qoperator" writes the
    integer ops themselves (QLinearConv, QGemm, QLinearAdd): the graph onnxruntime runs anyway,
    in a smaller file (no separate Q/DQ nodes, no bias scales), but with onnxruntime-only ops.
    Layers matching ``exclude`` (or not ``targets``) stay float.
    """

    mode: Literal["static", "dynamic"] = "static"
    backend: Literal["onnxruntime", "torchao"] = "onnxruntime"
    per_channel: bool = True
    calibration_samples: int = Field(256, ge=1, le=100_000)
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    reduce_range: bool | None = None
    onnx_format: Literal["qdq", "qoperator"] = "qdq"

    @model_validator(mode="after")
    def _format_fits(self) -> PTQ:
        if self.onnx_format != "qdq" and (self.backend != "onnxruntime" or self.mode != "static"):
            raise ValueError(
                f"onnx_format={self.onnx_format!r} applies to static int8 with the onnxruntime "
                f"backend (got mode={self.mode!r}, backend={self.backend!r}); drop onnx_format "
                "or use Int8Static(backend='onnxruntime', onnx_format='qoperator')"
            )
        # options a combination would ignore are errors, so a setting never silently vanishes
        if self.backend == "torchao" and not self.per_channel:
            raise ValueError(
                "the torchao backend quantizes weights per channel only: drop "
                "per_channel=False, or use backend='onnxruntime' for per-tensor weights"
            )
        if self.method != "minmax" and (self.backend != "onnxruntime" or self.mode != "static"):
            raise ValueError(
                f"method={self.method!r} chooses how onnxruntime calibrates static int8 "
                f"(got mode={self.mode!r}, backend={self.backend!r}); drop method"
            )
        if "calibration_samples" in self.model_fields_set and self.mode == "dynamic":
            raise ValueError(
                "dynamic int8 calibrates nothing (activations are quantized per batch at run "
                "time): drop calibration_samples"
            )
        return self


class Int8Static(PTQ):
    """Static int8: weights and activations (calibrated on a data subset)."""

    mode: Literal["static"] = "static"


class Int8Dynamic(PTQ):
    """Dynamic int8: weights stored int8, activations quantized per batch at run time."""

    mode: Literal["dynamic"] = "dynamic"


def float_layers(model: nn.Module, config: PTQ) -> list[str]:
    """Names of the weighted layers ``config`` keeps in float (not targeted, or excluded).

    Raises :class:`ConfigError` naming any targeted layer type no int8 backend handles, with
    the ``exclude`` setting that keeps it in float.
    """
    leaves = [
        (n, m)
        for n, m in model.named_modules()
        if n and next(m.children(), None) is None and any(True for _ in m.parameters(False))
    ]
    unsupported = [
        (n, m)
        for n, m in leaves
        if not isinstance(m, QUANTIZABLE + _FOLDED_OR_FLOAT)
        and matches(n, config.targets)
        and not matches(n, config.exclude)
    ]
    if unsupported:
        named = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in unsupported)
        names = ", ".join(repr(n) for n, _ in unsupported)
        raise ConfigError(
            f"int8 {config.mode} quantization cannot quantize layer(s) {named}: only "
            f"{', '.join(t.__name__ for t in QUANTIZABLE)} get integer kernels (norm layers are "
            f"folded or kept float). Keep them in float with exclude=({names},), e.g. "
            f"{type(config).__name__}(exclude=({names},)) or `exclude: [...]` in the recipe"
        )
    chosen = {n for n, _ in select_modules(model, config.targets, config.exclude, QUANTIZABLE)}
    return [n for n, m in leaves if isinstance(m, QUANTIZABLE) and n not in chosen]


def _flops(model: nn.Module, example: torch.Tensor) -> int | None:
    from dwindle.metrics import count_flops

    try:
        return count_flops(model, example[:1])
    except Exception:  # a model FlopCounterMode cannot run: leave the figure out, not fail
        return None


def _check_inputs(name: str, x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return None
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
        raise ConfigError(
            f"{name} must be a batch of model inputs (a tensor with the batch dimension first, "
            f"e.g. data.calib(256)); got {type(x).__name__}"
            + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else "")
        )
    return x.detach().float().cpu()


def quantize(
    model: nn.Module,
    config: PTQ,
    *,
    calibration: torch.Tensor | None = None,
    example_input: torch.Tensor | None = None,
) -> nn.Module:
    """A new int8 model running integer kernels on CPU; ``model`` is left untouched.

    ``calibration``: representative inputs (e.g. ``data.calib(256)``), required for static
    quantization; the first ``config.calibration_samples`` are used. Dynamic quantization
    needs only an ``example_input`` (or ``calibration``) to trace the model.
    The result has ``dwindle_backend`` ("onnxruntime"/"torchao") and a ``dwindle_format``
    whose artifact is the quantized file, so :func:`dwindle.metrics.compare` sizes it.
    """
    if not isinstance(config, PTQ):
        raise ConfigError(
            f"quantize takes an Int8Static or Int8Dynamic config, not {type(config).__name__}"
        )
    calibration = _check_inputs("calibration", calibration)
    example_input = _check_inputs("example_input", example_input)
    if config.mode == "static" and calibration is None:
        raise ConfigError(
            "static int8 quantization needs calibration data to choose activation ranges: pass "
            "calibration=<a batch of ~100-1000 representative inputs>, e.g. "
            f"quantize(model, {type(config).__name__}(...), calibration=data.calib(256)); in a "
            "recipe the quantize stage takes them from the recipe's data. Or use Int8Dynamic(), "
            "which needs none"
        )
    example = calibration if calibration is not None else example_input
    if example is None:
        raise ConfigError(
            "dynamic int8 quantization needs one example input to trace the model: pass "
            "example_input=data.example_input(2) (or calibration=data.calib(8))"
        )
    keep_float = float_layers(model, config)
    flops = _flops(model, example)
    if calibration is not None:
        calibration = calibration[: config.calibration_samples]
    if config.backend == "onnxruntime":
        from dwindle.quantization.backends.ort import ort_quantize_dynamic, ort_quantize_static

        if config.mode == "static":
            out: nn.Module = ort_quantize_static(
                model,
                calibration,
                per_channel=config.per_channel,
                float_modules=keep_float,
                method=config.method,
                reduce_range=config.reduce_range,
                onnx_format=config.onnx_format,
                flops=flops,
            )
        else:
            out = ort_quantize_dynamic(
                model,
                example,
                per_channel=config.per_channel,
                float_modules=keep_float,
                flops=flops,
            )
    else:
        from dwindle.quantization.backends.torchao_backend import (
            torchao_quantize_dynamic,
            torchao_quantize_static,
        )

        if config.mode == "static":
            out = torchao_quantize_static(
                model,
                calibration,
                per_channel=config.per_channel,
                float_modules=keep_float,
                reduce_range=config.reduce_range,
                flops=flops,
            )
        else:
            out = torchao_quantize_dynamic(model, example, float_modules=keep_float, flops=flops)
    out.dwindle_float_layers = tuple(keep_float)
    return out.eval()


@register_technique(
    "quantize", PTQ, "post-training int8 (static/dynamic) on onnxruntime or torchao"
)
def _quantize_stage(model: nn.Module, config: PTQ, context: StageContext) -> nn.Module:
    data = context.data
    if config.mode == "static" and data is None:
        raise ConfigError(
            "the quantize stage (mode: static) needs calibration data: give the recipe a "
            "`data:` section (calibration uses data.calib(calibration_samples)), or use "
            "mode: dynamic"
        )
    calibration = data.calib(config.calibration_samples) if data is not None else None
    out = quantize(model, config, calibration=calibration)
    kept = getattr(out, "dwindle_float_layers", ())
    context.note(
        f"quantize: {getattr(out, 'scheme', config.mode)} ran on backend "
        f"{out.dwindle_backend}"
        + (
            f" ({len(calibration)} calibration samples)"
            if calibration is not None and config.mode == "static"
            else ""
        )
        + (f"; kept in float: {', '.join(kept)}" if kept else "")
        + ". The int8 model is inference-only: a later stage that trains (fine-tuning, "
        "pruning with recovery, QAT) cannot run on it, so put quantize last."
    )
    return out
