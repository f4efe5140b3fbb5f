"""Top-1 accuracy and cross-entropy of a classifier on one split of a DataBundle."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode, first_output, model_input_dtype
from dwindle.metrics.significance import wilson_interval

__all__ = ["evaluate_accuracy"]


def evaluate_accuracy(
    model: nn.Module,
    data: DataBundle,
    split: str = "test",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    return_correct: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``split``: ``accuracy`` (0–1) with its 95 % Wilson interval
    ``accuracy_ci95``, ``error_pct``, ``test_errors``, ``n_test`` (errors and count of the
    evaluated split) and mean cross-entropy ``loss``; with ``return_correct`` also ``correct``,
    a bool tensor per example in split order (for :func:`~dwindle.metrics.mcnemar`).

    The model runs in eval mode (its flags are restored after) on ``device``, where it must be.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    n = data.size(split)  # raises ConfigError naming the valid splits
    if n == 0:
        raise ConfigError(f"split {split!r} of dataset {data.name!r} is empty; evaluate another")
    correct = 0
    hits: list[torch.Tensor] = []
    loss_sum = 0.0
    dtype = model_input_dtype(model)
    with eval_mode(model), torch.inference_mode():
        for x, y in data.batches(split, batch_size, device=device, dtype=dtype):
            logits = first_output(model(x)).float()
            if logits.dim() != 2 or logits.shape[1] != data.num_classes:
                raise ConfigError(
                    f"model output has shape {tuple(logits.shape)} but {data.name!r} needs "
                    f"(batch, {data.num_classes}) class logits; check the model's num_classes"
                )
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            hit = logits.argmax(dim=1) == y
            correct += int(hit.sum().item())
            if return_correct:
                hits.append(hit.cpu())
    errors = n - correct
    out: dict[str, Any] = {
        "accuracy": correct / n,
        "accuracy_ci95": [round(v, 6) for v in wilson_interval(correct, n)],
        "error_pct": 100.0 * errors / n,
        "test_errors": errors,
        "n_test": n,
        "loss": loss_sum / n,
    }
    if return_correct:
        out["correct"] = torch.cat(hits)
    return out
