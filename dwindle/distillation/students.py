"""Students, assistants, extra teachers: from the zoo, a pruned teacher copy, or a user model.

Distillation needs only that teacher and student take the same inputs and predict the same
classes; their architectures may differ completely. A :class:`ModelSource` says where a model
comes from in a recipe: a zoo name or ``file.py:factory`` with arguments (e.g. a smaller width)
and optional weights, or ``prune_teacher`` — a copy of the teacher with that share of its
channels removed by structured (L1 filter) pruning, which keeps the teacher's learned features.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from dwindle._imports import require
from dwindle.config import Config
from dwindle.errors import ConfigError

__all__ = ["ModelSource", "build_model_from", "pruned_copy", "student_from_zoo"]


class ModelSource(Config):
    """Where a model comes from: ``zoo``/``path`` (+ ``args``, ``weights``) or ``prune_teacher``.

    ``prune_teacher``: the share (0..1) of each layer's channels removed from a copy of the
    teacher; the classifier keeps its outputs.
    """

    zoo: str | None = None
    path: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    prune_teacher: float | None = Field(None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSource:
        given = [k for k in ("zoo", "path", "prune_teacher") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'zoo' (a zoo model name), 'path' ('file.py:factory') or "
                f"'prune_teacher' (a ratio of channels to remove from a teacher copy); got {given}"
            )
        return self


def student_from_zoo(name: str, data: Any = None, **args: Any) -> nn.Module:
    """A zoo model sized for ``data`` (its classes and input shape), e.g. a narrower ``mlp``."""
    from dwindle.models import create

    if data is not None:
        args.setdefault("num_classes", data.num_classes)
        args.setdefault("input_shape", tuple(data.input_shape))
    return create(name, **args)


def _classifier(model: nn.Module) -> nn.Module | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d | nn.Conv1d):
            last = module
    return last


def pruned_copy(teacher: nn.Module, ratio: float, example_input: torch.Tensor) -> nn.Module:
    """A copy of ``teacher`` with ``ratio`` of its channels removed (L1 norm, Torch-Pruning).

    The teacher itself is not changed; the last layer keeps its outputs (the classes).
    """
    tp = require("torch_pruning", "pruning", "a student pruned from the teacher")
    student = copy.deepcopy(teacher).eval()
    last = _classifier(student)
    pruner = tp.pruner.MetaPruner(
        student,
        example_input,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[last] if last is not None else [],
    )
    pruner.step()
    return student


def build_model_from(
    source: ModelSource,
    teacher: nn.Module | None,
    data: Any,
    resolve: Callable[[str | None], str | None] = lambda path: path,
) -> nn.Module:
    """Build the model ``source`` describes, sized for ``data``; ``resolve`` maps its ``path``
    and ``weights`` to files (a recipe's: relative to the recipe's folder)."""
    from dwindle.models import build_model

    if source.prune_teacher is not None:
        if teacher is None:
            raise ConfigError("prune_teacher needs a teacher to copy")
        return pruned_copy(teacher, source.prune_teacher, data.example_input(2))
    args = dict(source.args)
    args.setdefault("num_classes", data.num_classes)
    if source.zoo is not None:
        args.setdefault("input_shape", tuple(data.input_shape))
    spec = source.zoo if source.zoo is not None else str(resolve(source.path))
    return build_model(spec, weights=resolve(source.weights), **args)
