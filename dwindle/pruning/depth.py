"""Layer (depth) pruning: remove whole residual blocks chosen by a criterion.

A block of a residual stage (a child of an ``nn.Sequential`` whose output has its input's
shape) can be replaced by the identity, since the skip connection already carries its input.
Criteria:

* ``similarity`` — cosine similarity of the block's input and output on calibration data; the
  blocks that change their input least go first (the "block influence" of Men et al. 2024,
  ShortGPT, and the angular distance of Gromov et al. 2024, applied here to CNN blocks);
* ``accuracy`` — the validation accuracy drop when the block alone is removed (a one-shot
  sensitivity ranking, as in Veit et al. 2016's lesion study of ResNets).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.pruning.structured import example_input_for
from dwindle.targets import select_modules

__all__ = ["LayerPruning", "block_scores", "prune_layers_", "removable_blocks", "remove_block"]


class LayerPruning(TargetedConfig):
    """Remove ``blocks`` residual blocks (default: any shape-preserving block of a stage).

    ``criterion``: ``similarity`` (input/output cosine similarity; ``batches`` calibration
    batches) or ``accuracy`` (validation accuracy without the block; ``eval_samples``
    validation samples). Targets match block names such as ``"layer*.*"``.
    """

    blocks: int = Field(1, ge=1)
    criterion: Literal["similarity", "accuracy"] = "similarity"
    batches: int = Field(2, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_samples: int = Field(1000, ge=1)


def _shapes(model: nn.Module, example_input: torch.Tensor) -> dict[nn.Module, bool]:
    """For each module: does its (single tensor) output have its input's shape?"""
    same: dict[nn.Module, bool] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        ok = len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
        same[module] = ok and args[0].shape == out.shape

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return same


def removable_blocks(
    model: nn.Module,
    example_input: torch.Tensor,
    targets: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Names of shape-preserving, non-leaf children of ``nn.Sequential`` containers."""
    same = _shapes(model, example_input)
    selected = {n for n, _ in select_modules(model, targets, exclude, leaves_only=False)}
    names = []
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if next(child.children(), None) is not None and same.get(child) and name in selected:
                names.append(name)
    return names


def remove_block(model: nn.Module, name: str) -> nn.Module:
    """Primitive: replace block ``name`` by ``nn.Identity`` in place; return the removed block."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    block = getattr(parent, child)
    setattr(parent, child, nn.Identity())
    return block


def _similarity_scores(
    model: nn.Module, names: list[str], data: Any, example_input: torch.Tensor, cfg: LayerPruning
) -> dict[str, float]:
    modules = dict(model.named_modules())
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
            sim = F.cosine_similarity(args[0].flatten(1), out.flatten(1), dim=1)
            sums[name] += float(sim.sum())
            counts[name] += len(sim)

        return hook

    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if data is None:
                model(example_input)
            else:
                for i, (x, _) in enumerate(data.batches("train", cfg.batch_size, shuffle=True)):
                    if i >= cfg.batches:
                        break
                    model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / max(counts[n], 1) for n in names}


def _accuracy_scores(model: nn.Module, names: list[str], data: Any, cfg: LayerPruning):
    from dwindle.data.bundle import DataBundle
    from dwindle.training import evaluate

    x, y = data.split("val") if data.size("val") else data.split("train")
    sub = DataBundle(
        data.name, x[:0], y[:0], x[: cfg.eval_samples], y[: cfg.eval_samples], x[:0], y[:0],
        data.num_classes,
    )  # fmt: skip
    scores = {}
    for name in names:
        trial = copy.deepcopy(model)
        remove_block(trial, name)
        scores[name] = evaluate(trial, sub, "val")["accuracy"]  # higher = less needed
    return scores


def block_scores(
    model: nn.Module,
    config: LayerPruning,
    *,
    example_input: torch.Tensor | None = None,
    data: Any = None,
) -> dict[str, float]:
    """Score of each removable block; the highest-scoring blocks are removed first."""
    ex = example_input_for(example_input, data, "layer pruning")
    names = removable_blocks(model, ex, config.targets, config.exclude)
    if not names:
        raise ConfigError(
            "layer pruning found no removable block: it removes children of nn.Sequential "
            "stages whose output has their input's shape (e.g. ResNet BasicBlocks without "
            "downsampling); check targets/exclude"
        )
    if config.criterion == "accuracy":
        if data is None:
            raise ConfigError("criterion 'accuracy' needs data: pass data=<DataBundle>")
        return _accuracy_scores(model, names, data, config)
    return _similarity_scores(model, names, data, ex, config)


def prune_layers_(
    model: nn.Module,
    config: LayerPruning,
    *,
    example_input: torch.Tensor | None = None,
    data: Any = None,
) -> list[str]:
    """Remove ``config.blocks`` blocks from ``model`` in place; return their names."""
    scores = block_scores(model, config, example_input=example_input, data=data)
    if config.blocks >= len(scores):
        raise ConfigError(
            f"blocks={config.blocks} would remove every removable block ({len(scores)}: "
            f"{', '.join(scores)}); choose fewer"
        )
    ranked = sorted(scores, key=lambda n: -scores[n])[: config.blocks]
    for name in ranked:
        remove_block(model, name)
    return ranked


@register_technique("prune_layers", LayerPruning, "remove whole residual blocks (depth pruning)")
def _prune_layers_stage(model: nn.Module, config: LayerPruning, context: StageContext) -> nn.Module:
    removed = prune_layers_(model, config, data=context.data)
    context.note(f"prune_layers: removed blocks {', '.join(removed)} ({config.criterion})")
    return model
