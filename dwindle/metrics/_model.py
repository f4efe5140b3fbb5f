"""What running a model for measurement needs: its input dtype/device, eval mode, its output."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["eval_mode", "first_output", "model_device", "model_input_dtype", "prepare_input"]


def model_input_dtype(model: nn.Module) -> torch.dtype | None:
    """The float dtype inputs must be cast to, or None when float32 inputs are accepted as is.

    A precision technique that installs input-casting hooks sets
    ``model.dwindle_accepts_float32 = True``; otherwise inputs follow the first floating
    parameter (or buffer), so an fp16/bf16/fp64 model is fed matching inputs.
    """
    if getattr(model, "dwindle_accepts_float32", False):
        return None
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def prepare_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` moved to the model's device and, if floating, cast to :func:`model_input_dtype`."""
    dtype = model_input_dtype(model)
    device = model_device(model)
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x.to(device) if x.device != device else x


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, keep_buffers: bool = False) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, restoring every submodule's training flag afterwards.

    With ``keep_buffers`` the buffers are snapshotted and restored too, so a module that updates
    state even in eval mode (an observer, a running statistic) is left exactly as it was.
    """
    flags = [(m, m.training) for m in model.modules()]
    saved = {n: b.detach().clone() for n, b in model.named_buffers()} if keep_buffers else {}
    try:
        model.eval()
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        if saved:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in saved and b.shape == saved[n].shape:
                        b.copy_(saved[n])


def first_output(out: Any) -> torch.Tensor:
    """The logits tensor of a forward's result (a tensor, a tuple/list, or a dict with logits)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    if isinstance(out, dict):
        for key in ("logits", "output", "out"):
            if key in out:
                return first_output(out[key])
    raise TypeError(f"cannot find an output tensor in a {type(out).__name__}")
