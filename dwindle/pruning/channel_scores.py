"""Per-channel importance for filter pruning: filter norms, group magnitudes, Taylor.

:func:`channel_scores` scores each output channel of each conv by its own filters (L1/L2, Li et
al. 2017) or by the first-order Taylor estimate (Molchanov et al. 2019); :func:`group_scores`
sums the magnitudes of every weight a Torch-Pruning channel group removes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dwindle.errors import ConfigError

if TYPE_CHECKING:
    from dwindle.pruning.structured import FilterPruning

__all__ = ["channel_scores", "group_scores"]

CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _taylor_scores(
    model: nn.Module, convs: Sequence[nn.Module], data: Any, config: FilterPruning
) -> dict[nn.Module, torch.Tensor]:
    """Per-channel (Σ w·∂L/∂w)² summed over mini-batches (Molchanov et al. 2019, eq. 8)."""
    from dwindle.training import logits_of

    scores = {m: torch.zeros(m.weight.shape[0], dtype=torch.float64) for m in convs}
    was_training = model.training
    model.eval()  # gradients only: batch-norm statistics must not move
    try:
        batches = data.batches("train", config.batch_size, shuffle=True)
        for i, (x, y) in enumerate(batches):
            if i >= config.taylor_batches:
                break
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                F.cross_entropy(logits_of(model(x)), y).backward()
            for m in convs:
                contrib = (m.weight * m.weight.grad).flatten(1).sum(1)
                if m.bias is not None and m.bias.grad is not None:
                    contrib = contrib + m.bias * m.bias.grad
                scores[m] += contrib.detach().double() ** 2
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


def group_scores(graph: Any, group: Any, n: int, p: int) -> torch.Tensor:
    """Σ|w|^p per root channel over every weight a channel group removes.

    Producers' output filters, norm layers' scales and consumers' input slices (a linear layer
    after a flatten holds several inputs per channel; ``root_idxs`` maps each back).
    Grouped convs are skipped as consumers (their input slice is their own filter).
    """
    score = torch.zeros(n, dtype=torch.float64)
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        root = getattr(item, "root_idxs", None)
        if not isinstance(module, nn.Module) or root is None or any(r is None for r in root):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        w = weight.detach().double()
        if graph.is_out_channel_pruning_fn(handler):
            if isinstance(module, (*CONV_TYPES, nn.Linear)):
                local = w[item.idxs].flatten(1).abs().pow(p).sum(1)
            elif isinstance(module, _NORM_TYPES):
                local = w[item.idxs].abs().pow(p)
            else:
                continue
        elif graph.is_in_channel_pruning_fn(handler):
            if (
                not isinstance(module, (*CONV_TYPES, nn.Linear))
                or getattr(module, "groups", 1) != 1
            ):
                continue
            local = w.transpose(0, 1)[item.idxs].flatten(1).abs().pow(p).sum(1)
        else:
            continue
        score.index_add_(0, torch.as_tensor(root, dtype=torch.long), local)
    return score


def channel_scores(
    model: nn.Module,
    convs: Sequence[nn.Module],
    config: FilterPruning,
    data: Any = None,
) -> dict[nn.Module, torch.Tensor]:
    """Importance of each output channel of each conv in ``convs`` (higher = keep)."""
    if config.criterion == "taylor":
        if data is None:
            raise ConfigError(
                "criterion 'taylor' needs gradients, hence data: pass data=<DataBundle> "
                "(or use criterion 'l1' / 'l2', which are data-free)"
            )
        return _taylor_scores(model, convs, data, config)
    p = 1 if config.criterion == "l1" else 2
    return {m: m.weight.detach().flatten(1).double().norm(p=p, dim=1) for m in convs}
