"""Build a model from a spec: a zoo name, or ``path/to/file.py:factory`` for the user's own."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from dwindle.errors import DwindleError, ModelSpecError
from dwindle.models.zoo import create

__all__ = ["build_model", "load_model_spec"]

_FORM = "'path/to/file.py:factory'"


def _defined_callables(module: ModuleType) -> list[str]:
    """Public functions and classes defined in ``module`` itself (not imported into it)."""
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(obj) or inspect.isclass(obj))
        and getattr(obj, "__module__", None) == module.__name__
    )


def _import_file(path: Path) -> ModuleType:
    resolved = path.resolve()
    # A stable, unique name keeps classes from the file picklable while it stays in sys.modules.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    name = f"dwindle_user_model_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {path} as a Python module; it must be a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The file's own folder goes on sys.path only while it runs, for its sibling imports.
    folder = str(resolved.parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelSpecError(
            f"importing model file {path} failed with {type(exc).__name__}: {exc}; "
            "fix the file so that `python <file>` runs"
        ) from exc
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _call_factory(factory: Any, where: str, kwargs: dict[str, Any]) -> Any:
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as exc:
            accepted = [
                p.name
                for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            raise ModelSpecError(
                f"{where} cannot be called with {sorted(kwargs)}: {exc} "
                f"(it accepts: {', '.join(accepted) or 'no arguments'})"
            ) from None
    try:
        return factory(**kwargs)
    except DwindleError:
        raise
    except Exception as exc:
        raise ModelSpecError(
            f"{where} raised {type(exc).__name__}: {exc}; check the factory and its arguments"
        ) from exc


def load_model_spec(spec: str, **kwargs: Any) -> nn.Module:
    """Build the model named by ``spec``: a zoo name or ``path/to/file.py:factory``.

    ``kwargs`` go to the zoo factory or to ``factory(**kwargs)`` in the file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(
            f"a model spec must be a zoo name or {_FORM} (got {spec!r}); "
            "see `dwindle zoo` for the zoo names"
        )
    file_part, sep, factory_name = spec.rpartition(":")
    if not sep and not spec.endswith(".py"):
        return create(spec, **kwargs)
    if not sep:
        file_part, factory_name = spec, ""
    # "C:\\model.py" has a colon but no factory part.
    if sep and not file_part.endswith(".py") and spec.endswith(".py"):
        file_part, factory_name = spec, ""
    if not file_part.endswith(".py"):
        raise ModelSpecError(f"model spec {spec!r} is not a zoo name nor of the form {_FORM}")
    path = Path(file_part).expanduser()
    if not path.is_file():
        raise ModelSpecError(
            f"model file {str(path)!r} does not exist (resolved to {path.resolve()}); "
            f"check the path in {spec!r}"
        )
    module = _import_file(path)
    choices = _defined_callables(module)
    listed = ", ".join(choices) if choices else "none"
    if not factory_name:
        raise ModelSpecError(
            f"model spec {spec!r} names no factory; use the form {_FORM}, "
            f"e.g. '{file_part}:{choices[0] if choices else 'build'}' "
            f"(callables defined in {file_part}: {listed})"
        )
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        raise ModelSpecError(
            f"{file_part} defines no callable {factory_name!r} "
            f"(callables defined there: {listed}); use the form {_FORM}"
        )
    model = _call_factory(factory, f"{file_part}:{factory_name}", kwargs)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(
            f"{file_part}:{factory_name} returned {type(model).__name__}, not a torch.nn.Module; "
            "the factory must return the model instance"
        )
    return model


def build_model(
    spec: str,
    weights: str | Path | None = None,
    *,
    strip_prefix: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """:func:`load_model_spec`, then load ``weights`` (a checkpoint file) into the model.

    ``strip_prefix``: a prefix the checkpoint's keys carry beyond DataParallel's ``module.``.
    """
    model = load_model_spec(spec, **kwargs)
    if weights is not None:
        # Imported here: the export package is optional at model-building time.
        from dwindle.export import load_weights

        if strip_prefix:
            load_weights(model, weights, strip_prefix=strip_prefix)
        else:
            load_weights(model, weights)
    return model
