"""FLOPs of one sample's forward pass, total, per module, and sparse-aware ("effective")."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode, prepare_input
from dwindle.metrics.counts import computed_weight, weight_density

__all__ = ["count_flops", "count_flops_by_module", "effective_flops"]

# Layers whose cost is a product with their weight, so zero weights are skippable work.
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)


def _one_sample(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise ConfigError(
            "example_input must be a batched tensor (batch dimension first), e.g. "
            f"data.example_input(1); got {type(example_input).__name__}"
        )
    if example_input.shape[0] == 0:
        raise ConfigError("example_input has an empty batch; give at least one sample")
    return prepare_input(model, example_input[:1])


def _flop_counts(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Per-module FLOPs keyed by ``named_modules()`` names; ``""`` is the whole model."""
    x = _one_sample(model, example_input)
    hook = getattr(model, "dwindle_flops", None)
    if callable(hook) and hook() is not None:  # a wrapped runtime torch cannot see into
        return {"": int(hook())}
    counter = FlopCounterMode(display=False)
    # keep_buffers: a module that updates state even in eval mode must not be changed by us.
    with eval_mode(model, keep_buffers=True), torch.no_grad(), counter:
        model(x)
    out: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # The counter names modules "<RootClass>.<path>"; drop the root's class name.
        _, _, path = key.partition(".")
        out[path] = int(sum(ops.values()))
    out[""] = int(counter.get_total_flops())
    return out


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """FLOPs (2 per multiply-add) of one sample's forward pass, in eval mode.

    Only the first sample of ``example_input`` is used. The model, its training flags and its
    buffers (e.g. BatchNorm statistics) are left as they were.
    """
    return _flop_counts(model, example_input)[""]


def count_flops_by_module(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """FLOPs of one sample per module name (``""`` = whole model); modules doing none omitted."""
    return {k: v for k, v in _flop_counts(model, example_input).items() if v or not k}


def effective_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Sparse-aware FLOPs: each Linear/Conv's FLOPs scaled by the density of its weight.

    A theoretical figure (what a kernel that skips zeros could reach), shown beside the
    dense :func:`count_flops`; dense kernels do not get faster from zeros alone.
    """
    counts = _flop_counts(model, example_input)
    saved = 0.0
    for name, module in model.named_modules():
        if (isinstance(module, _WEIGHTED) or computed_weight(module)) and counts.get(name):
            saved += counts[name] * (1.0 - weight_density(module))
    return max(0, round(counts[""] - saved))
