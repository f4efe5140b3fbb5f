"""A structural change is only handed back after a forward pass proves the model still works.

Tracers get some graphs wrong: Torch-Pruning 1.6.1's ``MagnitudePruner`` at ratio 0.5 on the
published CIFAR ResNet-56 returns from ``step()`` without error, yet the pruned model's forward
fails (``mat1 and mat2 shapes cannot be multiplied (1x56 and 32x10)``) because an option-A
shortcut's channel pad keeps its original channel count. :func:`output_shapes` records what the
model produced before a change; :func:`check_forward` runs it after and raises
:class:`~dwindle.pruning.structured.TracingError` naming the layer that failed and the fix;
:func:`guarded` does both around a block of in-place changes and restores the model on failure.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["check_forward", "guarded", "output_shapes"]


def _shapes(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shapes(o) for o in out)
    if isinstance(out, dict):
        return {k: _shapes(v) for k, v in out.items()}
    return type(out).__name__


def output_shapes(model: nn.Module, example_input: torch.Tensor) -> Any:
    """Shapes of ``model(example_input)`` (nested like the output), in eval mode, no grad."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _shapes(model(example_input))
    finally:
        model.train(was_training)


def check_forward(
    model: nn.Module,
    example_input: torch.Tensor,
    expected: Any,
    changed: Sequence[str] = (),
) -> None:
    """Run ``model`` on ``example_input``; raise ``TracingError`` unless it gives ``expected``.

    ``changed``: names of the layers the structural change touched, quoted in the advice.
    """
    from dwindle.pruning.structured import TracingError, _watch_forward

    touched = ", ".join(repr(n) for n in list(changed)[:4]) or "the pruned layers"
    was_training = model.training
    model.eval()
    with _watch_forward(model) as state, torch.no_grad():
        try:
            got = _shapes(model(example_input))
        except Exception as exc:  # any failure of the changed graph is reported the same way
            where = state["stack"][-1] if state["stack"] else "<model>"
            raise TracingError(
                f"the pruned {type(model).__name__} no longer runs: layer {where!r} fails with "
                f"{type(exc).__name__}: {exc}. A channel dependency through {where!r} was not "
                f"followed (e.g. an option-A shortcut's channel pad, which keeps its channel "
                f"count). Fix: exclude the layers coupled through it (changed: {touched}), e.g. "
                "prune only each residual block's first conv (targets=['layer*.*.conv1'])"
            ) from exc
        finally:
            model.train(was_training)
    if got != expected:
        raise TracingError(
            f"the pruned {type(model).__name__} changed its output shape: {got} instead of "
            f"{expected}. Pruning must not change the output; exclude the output layer and the "
            f"layers feeding it (changed: {touched})"
        )


@contextmanager
def guarded(
    model: nn.Module, example_input: torch.Tensor, changed: list[str]
) -> Iterator[list[str]]:
    """Around in-place structural changes: check the forward after, restore ``model`` on failure.

    The block appends the names of the layers it changes to ``changed`` (yielded back). On any
    error, inside the block or from the check, ``model`` gets its original modules back, so a
    broken model is never left behind.
    """
    expected = output_shapes(model, example_input)
    snapshot = copy.deepcopy(model)
    try:
        yield changed
        check_forward(model, example_input, expected, changed)
    except BaseException:
        model._modules = snapshot._modules
        model._parameters = snapshot._parameters
        model._buffers = snapshot._buffers
        raise
