"""Select modules by name patterns: which layers a technique touches is data, not code."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import torch

from dwindle.errors import ConfigError

__all__ = ["matches", "select_modules"]


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True if ``name`` matches any pattern (fnmatch glob, or regex when prefixed ``re:``)."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def select_modules(
    model: torch.nn.Module,
    targets: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    types: tuple[type[torch.nn.Module], ...] | None = None,
    *,
    leaves_only: bool = True,
) -> list[tuple[str, torch.nn.Module]]:
    """Named modules matching ``targets`` and not ``exclude`` (and of ``types`` when given).

    Raises :class:`ConfigError` when a target pattern matches no module, listing some names,
    because a typo in a pattern would otherwise silently compress nothing.
    """
    named = [
        (n, m)
        for n, m in model.named_modules()
        if n and (not leaves_only or next(m.children(), None) is None)
    ]
    if types is not None:
        named = [(n, m) for n, m in named if isinstance(m, types)]
    chosen = [(n, m) for n, m in named if matches(n, targets) and not matches(n, exclude)]
    for pattern in targets:
        if not any(matches(n, [pattern]) for n, _ in named):
            kinds = f" of type {', '.join(t.__name__ for t in types)}" if types else ""
            names = ", ".join(n for n, _ in named[:12]) or "(none)"
            raise ConfigError(
                f"target pattern {pattern!r} matches no module{kinds}; "
                f"module names are: {names}{' ...' if len(named) > 12 else ''}"
            )
    return chosen
