"""Import the modules that fill a registry: built-in ones by name, then entry-point plug-ins."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib.metadata import entry_points


def load_plugins(builtin: Iterable[str], group: str, *, optional: bool = False) -> None:
    """Import each module of ``builtin`` then every entry point of ``group``.

    With ``optional``, a built-in module that is absent from this install is skipped; a missing
    dependency *inside* a present module still raises, since hiding it would hide a bug.
    """
    for module in builtin:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if not optional or exc.name != module:
                raise
    for ep in entry_points(group=group):
        ep.load()
