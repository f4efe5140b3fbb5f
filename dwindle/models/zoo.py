"""The model zoo: a registry of model factories looked up by name.

A factory is any callable returning an ``nn.Module``; every built-in one takes ``num_classes``
and ``input_shape`` so a model can be made to fit any dataset with
``create(name, num_classes=data.num_classes, input_shape=data.input_shape)``.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from dwindle._plugins import load_plugins
from dwindle.errors import ModelSpecError

__all__ = ["ModelEntry", "available_models", "create", "get_model", "register_model"]

F = TypeVar("F", bound=Callable[..., nn.Module])

# Shipped model modules; imported on first lookup so that importing the registry stays cheap.
_BUILTIN_MODULES = (
    "dwindle.models.mlp",
    "dwindle.models.lenet",
    "dwindle.models.cnn",
    "dwindle.models.resnet",
)
_ENTRY_POINT_GROUP = "dwindle.models"
_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its zoo ``name``, ``factory`` and one-line ``summary``."""

    name: str
    factory: Callable[..., nn.Module]
    summary: str

    def parameters(self) -> list[str]:
        """Keyword arguments the factory accepts."""
        return [
            p.name
            for p in inspect.signature(self.factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]


def register_model(name: str, summary: str) -> Callable[[F], F]:
    """Decorator adding ``factory`` to the zoo under ``name``."""

    def deco(factory: F) -> F:
        _REGISTRY[name] = ModelEntry(name=name, factory=factory, summary=summary)
        return factory

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    load_plugins(_BUILTIN_MODULES, _ENTRY_POINT_GROUP)
    _loaded = True


def available_models() -> dict[str, str]:
    """Zoo model names mapped to their one-line summaries, sorted by name."""
    _ensure_loaded()
    return {name: _REGISTRY[name].summary for name in sorted(_REGISTRY)}


def get_model(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names raise with the nearest known one."""
    _ensure_loaded()
    if not isinstance(name, str) or name not in _REGISTRY:
        near = difflib.get_close_matches(str(name), list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ModelSpecError(
            f"unknown zoo model {name!r}{hint} (available: {', '.join(sorted(_REGISTRY))}); "
            "for your own model use 'path/to/file.py:factory'"
        )
    return _REGISTRY[name]


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build zoo model ``name`` with ``kwargs`` (e.g. ``num_classes=10``)."""
    entry = get_model(name)
    accepted = entry.parameters()
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        near = difflib.get_close_matches(unknown[0], accepted, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ModelSpecError(
            f"zoo model {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}{hint} "
            f"(accepted: {', '.join(accepted)})"
        )
    return entry.factory(**kwargs)


def resolve_input_shape(
    model: str,
    input_shape: Any,
    in_channels: int | None,
    default: tuple[int, ...],
    ndim: int | None = None,
) -> tuple[int, ...]:
    """Validate a model's ``input_shape`` (or ``in_channels``) argument into a tuple of ints.

    ``ndim`` is the number of dimensions the model needs (3 for images ``(C, H, W)``);
    ``in_channels`` alone keeps the default spatial size.
    """
    if input_shape is not None and in_channels is not None:
        raise ModelSpecError(
            f"{model}: give either input_shape or in_channels, not both "
            f"(got input_shape={input_shape!r}, in_channels={in_channels!r})"
        )
    if input_shape is None:
        input_shape = default if in_channels is None else (in_channels, *default[1:])
    try:
        shape = tuple(int(d) for d in input_shape)
        ok = all(d > 0 for d in shape) and len(shape) > 0
        ok = ok and all(int(d) == d for d in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelSpecError(
            f"{model}: input_shape must be a tuple of positive ints such as {default!r} "
            f"(got {input_shape!r})"
        )
    if ndim is not None and len(shape) != ndim:
        raise ModelSpecError(
            f"{model}: input_shape must have {ndim} dimensions like {default!r} "
            f"(got {shape!r}); pick a model made for this kind of input"
        )
    return shape


def check_positive(model: str, name: str, value: Any, allow_zero: bool = False) -> int:
    """``value`` as an int, raising :class:`ModelSpecError` unless it is a positive integer."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ModelSpecError(f"{model}: {name} must be {kind} integer (got {value!r})")
    return value


def check_dropout(model: str, value: Any) -> float:
    """``value`` as a dropout probability in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelSpecError(f"{model}: dropout must be a float in [0, 1) (got {value!r})")
    return float(value)
