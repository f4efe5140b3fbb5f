"""Evaluation and the forward-pass plumbing shared with the training loop."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError, ModelSpecError

__all__ = ["check_data", "evaluate", "input_dtype", "logits_of", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, raising :class:`ConfigError` when it is not usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"device {device!r} is not a torch device; use e.g. 'cpu' or 'cuda'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but CUDA is not available; use 'cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} was asked for but MPS is not available; use 'cpu'")
    return dev


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def input_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype inputs must be cast to: the first floating parameter's, if not float32.

    Models that handle float32 inputs themselves (e.g. quantized wrappers) opt out with the
    attribute ``dwindle_accepts_float32 = True``.
    """
    if getattr(model, "dwindle_accepts_float32", False):
        return None
    for p in model.parameters():
        if p.is_floating_point():
            return None if p.dtype == torch.float32 else p.dtype
    return None


def logits_of(output: Any) -> Tensor:
    """The class scores inside a model's output (a tensor, a tuple, or a ``.logits`` holder)."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    raise ModelSpecError(
        f"the model returned {type(output).__name__}; it must return class scores as a tensor "
        "(or a tuple whose first item, or an object whose .logits, is that tensor)"
    )


def check_data(data: Any) -> DataBundle:
    """``data`` itself, once checked to be a :class:`DataBundle`."""
    if not isinstance(data, DataBundle):
        raise ConfigError(
            f"data must be a dwindle DataBundle (got {type(data).__name__}); "
            "load one with dwindle.data.load(name) or build DataBundle(...) from tensors"
        )
    return data


def checked_forward(model: nn.Module, x: Tensor, data: DataBundle) -> tuple[Any, Tensor]:
    """Run the model on a first batch, turning shape mismatches into a clear error."""
    try:
        out = model(x)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelSpecError(
            f"{type(model).__name__} failed on a {tuple(x.shape)} {x.dtype} batch of dataset "
            f"{data.name!r}: {exc}; build the model for input_shape={data.input_shape} "
            f"and num_classes={data.num_classes}"
        ) from exc
    logits = logits_of(out)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0] or logits.shape[1] < data.num_classes:
        raise ModelSpecError(
            f"{type(model).__name__} returned scores of shape {tuple(logits.shape)} for a batch "
            f"of {x.shape[0]}; dataset {data.name!r} needs (batch, {data.num_classes}), so "
            f"create the model with num_classes={data.num_classes}"
        )
    return out, logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataBundle,
    split: str = "val",
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Top-1 ``accuracy`` (0..1), mean cross-entropy ``loss``, ``errors`` and ``n`` on a split.

    The model is moved to ``device`` (default: where its parameters already are); its
    train/eval mode is restored afterwards.
    """
    data = check_data(data)
    n = data.size(split)
    if n == 0:
        raise ConfigError(f"split {split!r} of dataset {data.name!r} is empty; evaluate another")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int (got {batch_size!r})")
    dev = resolve_device(device if device is not None else _model_device(model))
    was_training = model.training
    model.to(dev).eval()
    dtype = input_dtype(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    try:
        for i, (x, y) in enumerate(data.batches(split, batch_size, device=dev, dtype=dtype)):
            logits = checked_forward(model, x, data)[1] if i == 0 else logits_of(model(x))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    finally:
        model.train(was_training)
    right = int(correct.item())
    return {
        "accuracy": right / n,
        "loss": float(loss_sum.item()) / n,
        "errors": n - right,
        "n": n,
    }
