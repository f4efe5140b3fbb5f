"""Exceptions raised by dwindle. Every message names what is wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataNotFoundError",
    "DwindleError",
    "MissingExtraError",
    "ModelSpecError",
    "OutputDirError",
    "TrainingDivergedError",
]


class DwindleError(Exception):
    """Base class of every error dwindle raises on purpose."""


class ConfigError(DwindleError, ValueError):
    """A config or recipe value is unknown, of the wrong type, or out of range."""


class DataNotFoundError(DwindleError, FileNotFoundError):
    """A dataset directory or file is missing."""


class ModelSpecError(DwindleError, ValueError):
    """A model could not be built from its spec (zoo name, ``file.py:factory``)."""


class CheckpointError(DwindleError, ValueError):
    """A checkpoint could not be loaded into a model (shapes or keys do not fit)."""


class TrainingDivergedError(DwindleError, RuntimeError):
    """The training loss became NaN or infinite."""


class OutputDirError(DwindleError, OSError):
    """The output directory cannot be created or written."""


class MissingExtraError(DwindleError, ImportError):
    """An optional dependency is needed; the message names the extra to install."""
