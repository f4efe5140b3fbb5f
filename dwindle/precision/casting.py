"""Cast a model's floating parameters and buffers to another precision, whole or per layer.

Cast modules get small picklable hooks that cast floating inputs to the module's new dtype and
outputs back to the dtype the surrounding code expects, so a half-precision model still takes
and returns float32 tensors. On CPUs without native fp16/bf16 kernels this usually saves bytes,
not time; the measurement report says which.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.targets import select_modules

__all__ = ["DTYPES", "Precision", "cast_", "cast_module"]

DTYPES: dict[str, torch.dtype] = {
    "fp64": torch.float64,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}

# Normalisation layers are numerically fragile in half precision; keeping them in fp32 costs
# a few bytes (they hold few parameters).
_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class Precision(TargetedConfig):
    """Cast to ``dtype`` the modules matching ``targets`` (all by default).

    ``keep_norm``: leave batch/layer/group norm in their current precision when casting down.
    ``output``: dtype of the model's outputs when the whole model is cast ("fp32", or "same").
    """

    dtype: Literal["fp64", "fp32", "fp16", "bf16"] = "fp16"
    keep_norm: bool = False
    output: Literal["fp32", "same"] = "fp32"


def _cast_tree(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, tuple):
        return tuple(_cast_tree(o, dtype) for o in obj)
    if isinstance(obj, list):
        return [_cast_tree(o, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: _cast_tree(v, dtype) for k, v in obj.items()}
    return obj


class CastInputs:
    """Forward pre-hook: cast floating inputs to ``dtype`` (a class, so models stay picklable)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return _cast_tree(args, self.dtype)


class CastOutputs:
    """Forward hook: cast floating outputs to ``dtype``."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        return _cast_tree(output, self.dtype)


def _drop_cast_hooks(module: nn.Module) -> None:
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key in [k for k, h in hooks.items() if isinstance(h, CastInputs | CastOutputs)]:
            del hooks[key]


def _floating_dtype(module: nn.Module) -> torch.dtype | None:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def cast_module(module: nn.Module, dtype: torch.dtype, outer: torch.dtype | None) -> None:
    """Primitive: cast one module's floating tensors to ``dtype`` with input/output hooks.

    ``outer`` is the dtype its outputs are cast back to (None leaves outputs as computed).
    """
    _drop_cast_hooks(module)
    module.to(dtype)
    module.register_forward_pre_hook(CastInputs(dtype))
    if outer is not None and outer != dtype:
        module.register_forward_hook(CastOutputs(outer))


def cast_(model: nn.Module, config: Precision) -> nn.Module:
    """Cast ``model`` in place as ``config`` says and return it."""
    dtype = DTYPES[config.dtype]
    whole = tuple(config.targets) == ("*",) and not config.exclude
    if whole:
        norms = (
            [m for m in model.modules() if isinstance(m, _NORM_TYPES)] if config.keep_norm else []
        )
        outer = torch.float32 if config.output == "fp32" else None
        for module in model.modules():
            _drop_cast_hooks(module)
        # Everything inside runs in ``dtype``; norms kept back get their own hooks below.
        cast_module(model, dtype, outer)
        for norm in norms:
            cast_module(norm, torch.float32, dtype)
        model.dwindle_accepts_float32 = True
    else:
        # Each cast layer converts its own inputs and outputs, so the model keeps taking what
        # it took before; whether that is float32 is unchanged.
        for _, module in select_modules(model, config.targets, config.exclude):
            current = _floating_dtype(module)
            if current is None or (config.keep_norm and isinstance(module, _NORM_TYPES)):
                continue
            cast_module(module, dtype, current)
    model.dwindle_precision = config.dtype
    return model


@register_technique("precision", Precision, "cast weights to fp64 / fp32 / fp16 / bf16")
def _precision_stage(model: nn.Module, config: Precision, context: StageContext) -> nn.Module:
    before = _floating_dtype(model)
    out = cast_(model, config)
    if config.dtype in ("fp16", "bf16"):
        context.note(
            f"precision: {before} → {config.dtype}. Most CPUs have no fast {config.dtype} "
            "kernels: the saving is in bytes; check the measured speed-up before expecting speed."
        )
    return out
