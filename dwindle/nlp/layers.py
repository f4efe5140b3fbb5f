"""Depth pruning of transformer encoders: drop whole blocks, by importance or a fixed pattern.

``layer_importance`` scores each block by how much the task loss rises when that block alone
is skipped (leave-one-out on a data subset); ``keep_pattern`` spreads the kept blocks evenly
(every other one for 6 → 3, as DistilBERT initialises its student). ``drop_layers_`` removes the
blocks physically; recovery (distillation from the full model) is a separate step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode
from dwindle.nlp.encoder import encoder_layers
from dwindle.nlp.heads import sts_loss
from dwindle.nlp.text_data import StsPair

__all__ = ["drop_layers_", "keep_pattern", "layer_importance", "most_important_layers"]


def _check_count(total: int, layers: int) -> None:
    if not 1 <= layers <= total:
        raise ConfigError(
            f"cannot keep {layers} layer(s) of a {total}-layer encoder; choose 1..{total}"
        )


def keep_pattern(total: int, layers: int) -> list[int]:
    """``layers`` block indices spread evenly over ``total``, ending at the last block's side.

    6 → 3 keeps [1, 3, 5]; 6 → 4 keeps [0, 2, 4, 5] (rounded even spacing).
    """
    _check_count(total, layers)
    step = total / layers
    return sorted({min(total - 1, round(step * (i + 1) - 1)) for i in range(layers)})


def drop_layers_(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """Keep only the blocks ``keep`` (in their original order); in place."""
    layers = encoder_layers(model)
    kept = sorted({int(i) for i in keep})
    bad = [i for i in kept if not 0 <= i < len(layers)]
    if bad or not kept:
        raise ConfigError(
            f"layers to keep must be a non-empty subset of 0..{len(layers) - 1}; got {list(keep)}"
        )
    new = nn.ModuleList([layers[i] for i in kept])
    for pos, layer in enumerate(new):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = pos
    backbone = getattr(model, "backbone", model)
    backbone.encoder.layer = new
    if hasattr(backbone, "config"):
        backbone.config.num_hidden_layers = len(new)
    return model


def layer_importance(model: nn.Module, batches: Iterable[Sequence[StsPair]]) -> list[float]:
    """Task-loss increase when each block alone is skipped (higher: more important)."""
    batches = list(batches)
    if not batches:
        raise ConfigError("layer_importance needs at least one batch of data")

    def loss_of(m: nn.Module) -> float:
        with eval_mode(m), torch.inference_mode():
            return sum(float(sts_loss(m, b)) for b in batches) / len(batches)

    base = loss_of(model)
    total = len(encoder_layers(model))
    scores = []
    for skip in range(total):
        trial = drop_layers_(copy.deepcopy(model), [i for i in range(total) if i != skip])
        scores.append(loss_of(trial) - base)
    return scores


def most_important_layers(scores: Sequence[float], layers: int) -> list[int]:
    """Indices of the ``layers`` highest scores, in block order."""
    _check_count(len(scores), layers)
    ranked = sorted(range(len(scores)), key=lambda i: -scores[i])
    return sorted(ranked[:layers])
