"""Frozen, validated configs and the registry that dispatches a config to its technique.

A technique is one config class plus one handler ``handler(model, config, context) -> model``,
registered under a recipe stage name. The public verbs (``cast_``, later ``prune_``...) and
recipe stages all go through :func:`apply`, so a new technique is a new config class plus a
handler, never a new keyword on an old function.
"""

from __future__ import annotations

import contextvars
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from dwindle._plugins import load_plugins
from dwindle.errors import ConfigError

__all__ = [
    "Config",
    "StageContext",
    "TargetedConfig",
    "Technique",
    "apply",
    "ensure_techniques_loaded",
    "get_technique",
    "register_technique",
    "techniques",
    "validate_config",
]

C = TypeVar("C", bound="Config")

# Nesting depth of config validation: only the outermost call turns pydantic's error into a
# ConfigError, so nested configs' errors merge into one message with full key paths.
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("dwindle_config_depth", default=0)


class Config(BaseModel):
    """Base of every dwindle config: immutable, validated on construction, YAML-serialisable.

    Bad values raise :class:`ConfigError` naming the field, whether the config is built
    directly (``TrainConfig(lr=-1)``) or from a dict (``TrainConfig.from_dict(...)``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    def __init__(self, **data: Any) -> None:
        token = _depth.set(_depth.get() + 1)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            if _depth.get() > 1:
                raise
            raise ConfigError(validation_message(type(self), exc, type(self).__name__)) from None
        finally:
            _depth.reset(token)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """``epochs: true`` is a mistake, not 1: pydantic's lax mode would read a bool as a
        number, so a bool is refused for every field whose type does not admit one."""
        name = info.field_name or ""
        field = cls.model_fields.get(name)
        own = any(  # a field with its own before-validator reads bools itself (energy: off)
            name in d.info.fields and d.info.mode == "before"
            for d in cls.__pydantic_decorators__.field_validators.values()
        )
        if field and not own and (where := _misplaced_bool(value, field.annotation)):
            raise ValueError(where)
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready dict of the config's values."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls: type[C], data: Any, path: str = "") -> C:
        """Validate ``data`` into this config; errors name the key path and the nearest key."""
        return validate_config(cls, data, path or cls.__name__)


def _admits_bool(tp: Any) -> bool:
    """Whether the type ``tp`` accepts a bool (bool itself, Any, a union or Literal with one)."""
    return any(
        m in (bool, Any, object)
        or (
            typing.get_origin(m) is typing.Literal
            and any(isinstance(a, bool) for a in typing.get_args(m))
        )
        for m in _members(tp)
    )


def _members(tp: Any) -> list[Any]:
    """The alternatives of a union / Optional / Annotated annotation (``[tp]`` otherwise)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _members(a)]
    return [tp]


def _items_type(tp: Any, mapping: bool) -> Any:
    """What the elements (values, for ``mapping``) of a container annotation may be: the union
    of its members' element types, or None when no member is such a container."""
    kinds = (dict, Mapping) if mapping else (list, tuple, set, frozenset, Sequence)
    found = []
    for m in _members(tp):
        origin, args = typing.get_origin(m) or m, typing.get_args(m)
        if isinstance(origin, type) and issubclass(origin, kinds) and args:
            found += [a for a in (args[1:] if mapping else args) if a is not Ellipsis]
        elif m is Any:
            return Any
    return typing.Union[tuple(found)] if found else None  # noqa: UP007 (built at run time)


def _misplaced_bool(value: Any, tp: Any) -> str | None:
    """Why ``value`` holds a yes/no value where ``tp`` wants a number (None: it does not)."""
    if isinstance(value, bool | np.bool_):
        if _admits_bool(tp):
            return None
        return f"{bool(value)!r} is a yes/no value where {_type_name(tp)} is expected"
    if isinstance(value, list | tuple | dict):
        items = _items_type(tp, isinstance(value, dict))
        for item in value.values() if isinstance(value, dict) else value:
            if items is not None and (why := _misplaced_bool(item, items)):
                return why
    return None


def _type_name(tp: Any) -> str:
    """``tp`` as a reader would write it: ``int``, ``int | None``, ``Literal['off', 'on']``."""
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    if typing.get_origin(tp) in (typing.Annotated, typing.Union, types.UnionType):
        return " | ".join(_type_name(m) for m in _members(tp))
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(tp))


class TargetedConfig(Config):
    """A config whose technique touches only the modules whose names match ``targets``.

    Patterns are ``fnmatch`` globs over ``model.named_modules()`` names (``"features.*"``),
    or regular expressions when prefixed with ``re:``.
    """

    targets: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()


def _model_cls(tp: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation such as ``Foo | None`` or ``list[Foo]``."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_cls(arg)
        if found is not None:
            return found
    return None


def _fields_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid field names of the model found by walking ``loc`` (the parent of the bad key)."""
    current: type[BaseModel] | None = cls
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return []
        current = _model_cls(info.annotation)
    return list(current.model_fields) if current is not None else []


def format_loc(path: str, loc: Iterable[Any]) -> str:
    out = path
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(cls: type[BaseModel], exc: ValidationError, path: str) -> str:
    """Turn pydantic's errors into lines like ``recipe.stages[0].precision.dtyp: unknown key``."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = format_loc(path, loc)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(cls, loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            lines.append(f"{where}: unknown key{hint} (valid keys: {', '.join(valid)})")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{where}: {err['msg']}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def validate_config(cls: type[C], data: Any, path: str) -> C:
    """Validate ``data`` into ``cls``, raising :class:`ConfigError` with readable key paths."""
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    token = _depth.set(_depth.get() + 1)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        if _depth.get() > 1:
            raise
        raise ConfigError(validation_message(cls, exc, path)) from None
    finally:
        _depth.reset(token)


@dataclass
class StageContext:
    """What a technique handler may use besides the model and its config.

    ``data`` is a :class:`dwindle.data.DataBundle` (or None for data-free stages), ``baseline``
    the uncompressed model (a teacher for recovery), ``finetune`` a callable that fine-tunes
    a model on ``data`` with the trainer (``finetune(model, **train_overrides)``), ``resolve``
    maps a path written in the recipe to the file it names (relative to the recipe's folder).
    """

    data: Any = None
    baseline: torch.nn.Module | None = None
    device: str = "cpu"
    out_dir: Path | None = None
    finetune: Callable[..., Any] | None = None
    notes: list[str] = field(default_factory=list)
    # a recipe's paths (e.g. a teacher's weights) resolved against the recipe's directory
    resolve: Callable[[str | None], str | None] = field(default=lambda path: path)

    def note(self, message: str) -> None:
        """Record a remark that ends up in the run's report (e.g. a skipped layer)."""
        self.notes.append(message)


Handler = Callable[[torch.nn.Module, Any, StageContext], torch.nn.Module]


@dataclass(frozen=True)
class Technique:
    """A registered technique: recipe stage ``name``, its ``config`` class, its ``handler``."""

    name: str
    config: type[Config]
    handler: Handler
    summary: str = ""


_BY_CONFIG: dict[type[Config], Technique] = {}
_BY_NAME: dict[str, Technique] = {}

# Techniques shipped with dwindle; core names them as strings so it never imports them.
_BUILTIN_MODULES: tuple[str, ...] = (
    "dwindle.precision",
    "dwindle.pruning",
    "dwindle.quantization",
    "dwindle.distillation",
    "dwindle.factorization",
    "dwindle.sharing",
    "dwindle.nlp.stages",
)
_ENTRY_POINT_GROUP = "dwindle.techniques"
_loaded = False


def register_technique(
    name: str, config: type[Config], summary: str = ""
) -> Callable[[Handler], Handler]:
    """Decorator registering ``handler`` for ``config`` under recipe stage ``name``."""

    def deco(handler: Handler) -> Handler:
        tech = Technique(name=name, config=config, handler=handler, summary=summary)
        _BY_CONFIG[config] = tech
        _BY_NAME[name] = tech
        return handler

    return deco


def ensure_techniques_loaded() -> None:
    """Import the built-in techniques and plug-ins (entry point group ``dwindle.techniques``)."""
    global _loaded
    if _loaded:
        return
    # a built-in technique package not present in this install is simply not offered
    load_plugins(_BUILTIN_MODULES, _ENTRY_POINT_GROUP, optional=True)
    _loaded = True


def techniques() -> dict[str, Technique]:
    """All registered techniques by stage name."""
    ensure_techniques_loaded()
    return dict(_BY_NAME)


def get_technique(key: str | Config | type[Config]) -> Technique:
    """Look a technique up by stage name, config instance or config class."""
    if isinstance(key, str):
        ensure_techniques_loaded()
        if key not in _BY_NAME:
            near = difflib.get_close_matches(key, list(_BY_NAME), n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(
                f"unknown stage {key!r}{hint} (known stages: {', '.join(sorted(_BY_NAME))})"
            )
        return _BY_NAME[key]
    cls = key if isinstance(key, type) else type(key)
    for klass in cls.__mro__:
        if klass in _BY_CONFIG:
            return _BY_CONFIG[klass]
    raise ConfigError(
        f"no technique is registered for config type {cls.__name__}; "
        "register one with dwindle.config.register_technique"
    )


def apply(
    model: torch.nn.Module, config: Config, context: StageContext | None = None
) -> torch.nn.Module:
    """Run the technique registered for ``type(config)`` on ``model`` and return the result."""
    tech = get_technique(config)
    return tech.handler(model, config, context or StageContext())
