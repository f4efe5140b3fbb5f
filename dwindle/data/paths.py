"""Where datasets live: the directories searched for a dataset, and the user cache directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from dwindle.errors import DataNotFoundError

__all__ = [
    "ENV_CACHE",
    "ENV_DATA",
    "cache_dir",
    "default_roots",
    "locate",
    "repo_root",
]

ENV_DATA = "DWINDLE_DATA"
ENV_CACHE = "DWINDLE_CACHE"


def repo_root() -> Path:
    """The directory holding the ``dwindle`` package (the repository root in a checkout)."""
    return Path(__file__).resolve().parents[2]


def default_roots(name: str) -> list[Path]:
    """Directories searched for dataset ``name`` when no ``root`` is given, in order.

    ``$DWINDLE_DATA/<name>`` comes first because setting the variable is an explicit choice;
    then ``../shared/data/<name>`` relative to the working directory and to the repo root.
    """
    candidates = []
    env = os.environ.get(ENV_DATA)
    if env:
        candidates.append(Path(env).expanduser() / name)
    candidates.append(Path.cwd() / ".." / "shared" / "data" / name)
    candidates.append(repo_root() / ".." / "shared" / "data" / name)
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in candidates:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def locate(
    name: str,
    root: str | os.PathLike[str] | None,
    missing: Callable[[Path], list[str]],
    *,
    expected: Sequence[str],
    source: str,
) -> Path:
    """The first candidate directory of dataset ``name`` for which ``missing(dir)`` is empty.

    ``root`` (when given) is tried as is and as ``root/<name>``; otherwise
    :func:`default_roots`. Raises :class:`DataNotFoundError` listing every directory searched,
    what each one lacks, the ``expected`` file names and where to get them (``source``).
    """
    if root is not None:
        base = Path(root).expanduser()
        candidates = [base, base / name]
    else:
        candidates = default_roots(name)
    report = []
    for directory in candidates:
        if not directory.is_dir():
            why = "not a directory" if directory.exists() else "no such directory"
            report.append(f"  {_show(directory)}  ({why})")
            continue
        lacking = missing(directory)
        if not lacking:
            return directory
        report.append(f"  {_show(directory)}  (lacks {', '.join(lacking)})")
    raise DataNotFoundError(
        f"dataset {name!r} not found. Directories searched:\n"
        + "\n".join(report)
        + f"\nExpected files: {', '.join(expected)}.\n"
        f"Fix: pass root='<folder with these files>' to dwindle.data.load (in a recipe: "
        f"data.root), or set ${ENV_DATA} to a folder that holds '{name}/', "
        f"or download the files from {source}"
    )


def cache_dir() -> Path:
    """``$DWINDLE_CACHE`` if set, else ``~/.cache/dwindle`` (not created here)."""
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dwindle"


def _show(path: Path) -> str:
    # Resolve '..' so the message shows where we really looked, without failing on odd paths.
    try:
        return str(path.resolve())
    except OSError:
        return str(path)
