"""Mask primitives: compute masks, keep them as ``<param>_mask`` buffers, apply, bake.

A mask is a boolean buffer named ``<param>_mask`` next to the parameter it masks (the
convention :func:`dwindle.metrics.count_nonzeros` honours). Pruned weights are kept at zero
three ways, so no trainer can silently regrow them: :func:`apply_masks` (explicit),
:class:`MaskCallback` (after every optimizer step of dwindle's trainer), and a forward
pre-hook installed with each mask that re-applies it before a training-mode forward and
once after returning to eval mode (so any other training loop is safe too).

Masks zero weights but keep the dense tensors: they save no time on dense kernels. The
bytes are saved by the ``sparse`` export format (:mod:`dwindle.pruning.sparse`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dwindle.errors import ConfigError
from dwindle.targets import matches, select_modules
from dwindle.training import Callback, TrainState

__all__ = [
    "MASK_SUFFIX",
    "PRUNABLE_TYPES",
    "MaskCallback",
    "apply_masks",
    "get_mask",
    "global_magnitude_masks",
    "magnitude_mask",
    "masked_parameters",
    "prunable_modules",
    "remove_masks",
    "set_mask",
    "threshold_mask",
]

MASK_SUFFIX = "_mask"
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _type_names(types: Sequence[type[nn.Module]]) -> str:
    return ", ".join(f"nn.{t.__name__}" for t in types)


def prunable_modules(
    model: nn.Module,
    targets: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES,
) -> list[tuple[str, nn.Module]]:
    """Modules matching ``targets`` (not ``exclude``) whose ``weight`` can be pruned.

    Layers without parameters (activations, pooling) are skipped. A pattern whose matches
    are all layers with weights of another type (batch norm, embedding...) raises
    :class:`ConfigError` naming those module paths and the supported types, as does a
    pattern matching nothing (from :func:`dwindle.targets.select_modules`).
    """
    chosen = select_modules(model, targets, exclude)
    weighted = [(n, m) for n, m in chosen if isinstance(getattr(m, "weight", None), Tensor)]
    for pattern in targets:
        hits = [(n, m) for n, m in weighted if matches(n, [pattern])]
        if hits and not any(isinstance(m, types) for _, m in hits):
            shown = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in hits[:6])
            raise ConfigError(
                f"target {pattern!r} selects only layers that cannot be pruned: {shown}; "
                f"supported layer types are {_type_names(types)}; "
                "change the target or add the layer to exclude"
            )
    out = [(n, m) for n, m in weighted if isinstance(m, types)]
    if not out:
        raise ConfigError(
            f"targets {list(targets)} (exclude {list(exclude)}) select no prunable layer; "
            f"supported layer types are {_type_names(types)}"
        )
    return out


class ReapplyMasks:
    """Forward pre-hook keeping masked weights at zero under any training loop.

    In training mode it zeroes masked entries before every forward (undoing the last
    optimizer step's update to them); in eval mode it does so once after training and then
    costs one flag check. A class, not a closure, so models stay picklable.
    """

    def __init__(self) -> None:
        self.dirty = True

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training or self.dirty:
            _apply_module(module)
            self.dirty = module.training


def _hook_of(module: nn.Module) -> ReapplyMasks | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, ReapplyMasks):
            return hook
    return None


@torch.no_grad()
def _apply_module(module: nn.Module) -> None:
    for name, param in module._parameters.items():
        mask = module._buffers.get(name + MASK_SUFFIX) if param is not None else None
        if mask is not None:
            param.masked_fill_(~mask, 0.0)  # +0.0 (w * 0 would leave -0.0 for negative w)


def set_mask(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Attach (or replace) the boolean ``<name>_mask`` buffer of ``module`` and apply it."""
    param = module._parameters.get(name)
    if param is None:
        raise ConfigError(f"{type(module).__name__} has no parameter {name!r} to mask")
    if tuple(mask.shape) != tuple(param.shape):
        raise ConfigError(
            f"mask shape {tuple(mask.shape)} does not match {name} shape {tuple(param.shape)}"
        )
    # A copy of its own: a view into a larger (e.g. global) mask would pin and save all of it.
    owned = mask.detach().to(param.device, torch.bool).clone(memory_format=torch.contiguous_format)
    module.register_buffer(name + MASK_SUFFIX, owned)
    if _hook_of(module) is None:
        module.register_forward_pre_hook(ReapplyMasks())
    _apply_module(module)


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The ``<name>_mask`` buffer of ``module``, or None when it is not masked."""
    mask = module._buffers.get(name + MASK_SUFFIX)
    return mask if isinstance(mask, Tensor) else None


def masked_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor, Tensor]]:
    """``(module name, module, parameter name, parameter, mask)`` for every masked parameter."""
    for mod_name, module in model.named_modules():
        for name, param in module._parameters.items():
            mask = get_mask(module, name)
            if param is not None and mask is not None:
                yield mod_name, module, name, param, mask


def apply_masks(model: nn.Module) -> nn.Module:
    """Zero every masked entry of ``model`` in place (all ``<param>_mask`` buffers); returns it."""
    for module in model.modules():
        _apply_module(module)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake the masks in: apply them, then drop the buffers and hooks. Zeros stay; returns it."""
    for module in model.modules():
        _apply_module(module)
        for key in [k for k in module._buffers if k.endswith(MASK_SUFFIX)]:
            base = key[: -len(MASK_SUFFIX)]
            if base in module._parameters:
                del module._buffers[key]
        hooks = module._forward_pre_hooks
        for key in [k for k, h in hooks.items() if isinstance(h, ReapplyMasks)]:
            del hooks[key]
    return model


class MaskCallback(Callback):
    """Trainer callback re-applying the model's masks after every optimizer step."""

    def on_train_begin(self, state: TrainState) -> None:
        apply_masks(state.model)

    def on_step_end(self, state: TrainState) -> None:
        apply_masks(state.model)


def threshold_mask(scores: Tensor, threshold: float) -> Tensor:
    """Keep the entries whose score is strictly above ``threshold``."""
    return scores > threshold


def _keep_count(numel: int, sparsity: float) -> int:
    return max(0, min(numel, round(numel * (1.0 - sparsity))))


def magnitude_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep the ``round(numel * (1 - sparsity))`` highest scores (ties broken by position)."""
    flat = scores.detach().flatten()
    keep = _keep_count(flat.numel(), sparsity)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if keep:
        mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.view_as(scores)


def global_magnitude_masks(scores: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """One ranking over all ``scores`` together: keep the top ``1 - sparsity`` of them all."""
    flat = torch.cat([s.detach().flatten() for s in scores])
    mask = magnitude_mask(flat, sparsity)
    out, start = [], 0
    for s in scores:
        out.append(mask[start : start + s.numel()].view_as(s))
        start += s.numel()
    return out
