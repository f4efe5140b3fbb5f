"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from dwindle.errors import OutputDirError

__all__ = ["atomic_write", "atomic_write_bytes", "ensure_dir"]

_DEFAULT_MODE = 0o644


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and its parents) if needed; raise :class:`OutputDirError` if impossible."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(
            f"output directory {str(p)!r} exists but is not a directory; choose another path"
        )
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputDirError(
            f"cannot create output directory {str(p)!r}: {_reason(exc)}; "
            "choose a directory you can write to (or fix its permissions)"
        ) from exc
    return p


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp)`` on a temporary file next to ``path``, then move it over ``path``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    If ``writer`` raises, the previous ``path`` (if any) is untouched and the temporary removed.
    """
    target = Path(path)
    directory = ensure_dir(target.parent if str(target.parent) else ".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputDirError(
            f"cannot write into directory {str(directory)!r}: {_reason(exc)}; "
            "choose a directory you can write to (or fix its permissions)"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have.
        mode = target.stat().st_mode & 0o777 if target.exists() else _DEFAULT_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))
