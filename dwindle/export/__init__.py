"""Write models to disk: atomic files, a format registry (safetensors built in), ONNX."""

from __future__ import annotations

from dwindle.export.atomic import atomic_write, atomic_write_bytes, ensure_dir
from dwindle.export.formats import (
    Format,
    default_format,
    get_format,
    load_weights,
    register_format,
    registered_formats,
    save,
)
from dwindle.export.onnx_io import check_onnx, export_onnx

__all__ = [
    "Format",
    "atomic_write",
    "atomic_write_bytes",
    "check_onnx",
    "default_format",
    "ensure_dir",
    "export_onnx",
    "get_format",
    "load_weights",
    "register_format",
    "registered_formats",
    "save",
]
