"""Size on disk: bytes of the real serialised artifact, not parameters × 4."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from dwindle.export.formats import default_format, save

__all__ = ["artifact_bytes"]


def artifact_bytes(model: nn.Module, fmt: str | None = None) -> tuple[int, str]:
    """``(bytes, format)`` of ``model`` written with :func:`dwindle.export.save` in ``fmt``.

    ``fmt`` None uses the model's own format (a packed one if a technique set it), so the
    figure is the size of the file a user would ship.
    """
    name = fmt or default_format(model)
    with tempfile.TemporaryDirectory(prefix="dwindle-size-") as tmp:
        path = save(model, Path(tmp) / f"model.{name}", name)
        return path.stat().st_size, name
