"""Serialisation formats: a registry of savers/loaders, and checkpoint loading with clear errors.

Techniques that pack weights (int8, Huffman, ...) register their own format and set the model
attribute ``dwindle_format`` so :func:`save` and the size measurement pick it up.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle.errors import CheckpointError, ConfigError
from dwindle.export.atomic import atomic_write

__all__ = [
    "Format",
    "default_format",
    "get_format",
    "load_weights",
    "register_format",
    "registered_formats",
    "save",
]

SaveFn = Callable[[nn.Module, Path], None]
LoadFn = Callable[[nn.Module, Path], None]

_SAFETENSORS_MAGIC_MAX_HEADER = 100_000_000  # safetensors caps its JSON header at 100 MB
_LIST_LIMIT = 10


@dataclass(frozen=True)
class Format:
    """A named way of writing a model to one file (``save``) and reading it back (``load``);
    ``magic``: the first bytes of its files, by which :func:`load_weights` recognises them."""

    name: str
    save: SaveFn
    load: LoadFn | None = None
    magic: bytes | None = None


_FORMATS: dict[str, Format] = {}


def register_format(
    name: str, save_fn: SaveFn, load_fn: LoadFn | None = None, *, magic: bytes | None = None
) -> Format:
    """Register (or replace) format ``name``; ``save_fn(model, path)`` writes one file."""
    fmt = Format(name=name, save=save_fn, load=load_fn, magic=magic)
    _FORMATS[name] = fmt
    return fmt


def registered_formats() -> dict[str, Format]:
    """All registered formats by name."""
    return dict(_FORMATS)


def get_format(name: str) -> Format:
    """The registered format ``name``; :class:`ConfigError` listing the known ones otherwise."""
    if name not in _FORMATS:
        raise ConfigError(
            f"unknown export format {name!r}; known formats: {', '.join(sorted(_FORMATS))} "
            "(a technique registers its own with dwindle.export.register_format)"
        )
    return _FORMATS[name]


def default_format(model: nn.Module) -> str:
    """The model's ``dwindle_format`` attribute if a technique set one, else ``"safetensors"``."""
    fmt = getattr(model, "dwindle_format", None)
    return fmt if isinstance(fmt, str) and fmt else "safetensors"


def save(model: nn.Module, path: str | os.PathLike[str], fmt: str | None = None) -> Path:
    """Write ``model`` to ``path`` in ``fmt`` (default: :func:`default_format`), atomically."""
    spec = get_format(fmt or default_format(model))
    return atomic_write(path, lambda tmp: spec.save(model, tmp))


# --- safetensors -----------------------------------------------------------------------------


def _save_safetensors(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    # save_model drops aliases of shared tensors (tied weights) and makes tensors contiguous.
    try:
        save_model(model, str(path), force_contiguous=True)
    except (ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot write {type(model).__name__} as safetensors: {exc}; its state_dict must hold "
            "only tensors (a technique with packed weights should register its own format)"
        ) from exc


def _load_safetensors(model: nn.Module, path: Path) -> None:
    load_weights(model, path)


register_format("safetensors", _save_safetensors, _load_safetensors)


# --- loading ---------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < _SAFETENSORS_MAGIC_MAX_HEADER and head[8:9] == b"{"


def _refusal_message(path: Path, exc: Exception) -> str:
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    culprit = f" (it contains {found.group(1)})" if found else ""
    return (
        f"checkpoint {str(path)!r} holds pickled Python objects{culprit}, and dwindle refuses to "
        "unpickle arbitrary objects because that can run code. Convert it once, in an environment "
        "you trust: `sd = torch.load(path, weights_only=False)`; then save only the tensors with "
        "`torch.save(model.state_dict(), 'clean.pt')` or "
        "`safetensors.torch.save_model(model, 'clean.safetensors')` and load that file instead"
    )


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        # torch words every failure "Weights only load failed"; a refused class names a global.
        if re.search(r"Unsupported global|allowed global", str(exc)):
            raise CheckpointError(_refusal_message(path, exc)) from None
        # torch's text goes on to advise weights_only=False, which would run the file's code
        found = re.search(r"WeightsUnpickler error:\s*(.+?)\n", str(exc))
        reason = found.group(1).strip() if found else "not a pickle torch can read safely"
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: {reason}; it is neither a safetensors file "
            "nor a torch.save state dict (dwindle never unpickles arbitrary objects)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: {exc}; is it a torch.save or safetensors file?"
        ) from exc


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor state dict inside a checkpoint object (plain, or under "state_dict"/"model")."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict; "
            "save `model.state_dict()` rather than the model object"
        )
    for key in ("state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, dict):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(obj)[:_LIST_LIMIT]))
        raise CheckpointError(
            f"checkpoint {str(path)!r} contains no tensors (top-level keys: {keys}); "
            "expected a state dict, or a dict with a 'state_dict' or 'model' entry"
        )
    return tensors


def _strip_prefix(sd: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    # nn.DataParallel / DistributedDataParallel save every key under "module.".
    prefix = "module."
    if all(k.startswith(prefix) for k in sd) and not any(k.startswith(prefix) for k in model_keys):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return shown + (f" ... and {more} more" if more > 0 else "")


def _alias_groups(state: dict[str, torch.Tensor]) -> dict[str, tuple[Any, ...]]:
    """Key -> identity of its storage view, so tied weights saved once count as present."""
    out = {}
    for k, t in state.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else id(t)
        out[k] = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
    return out


def _check_fit(sd: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    state = model.state_dict()
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    groups = _alias_groups(state)
    present = {groups[k] for k in sd if k in groups}
    # BatchNorm's step counter only matters with momentum=None; checkpoints saved before
    # PyTorch 0.4.1 (e.g. the published CIFAR ResNets) lack it, and the model's own is kept.
    missing = [
        k
        for k in state
        if k not in sd and groups[k] not in present and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in sd if k not in state]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(state[k].shape)}"
        for k in sd
        if k in state and sd[k].shape != state[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"checkpoint {str(path)!r} does not fit {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing keys (in the model, not in the checkpoint): {_listed(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys (in the checkpoint, not the model): {_listed(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches: {_listed(mismatched)}")
    prefix = _common_prefix(unexpected, set(state))
    if prefix:
        lines.append(
            f"hint: the checkpoint's keys carry the prefix {prefix!r}; strip it with "
            f"load_weights(model, path, strip_prefix={prefix!r}) (CLI: --strip-prefix {prefix})"
        )
    else:
        lines.append(
            "hint: the checkpoint was saved from a different architecture or size; build the "
            "model with the same arguments it was trained with (e.g. the same zoo name, width, "
            "num_classes); if its keys carry a wrapper's prefix, pass strip_prefix='<prefix>.' "
            "(CLI: --strip-prefix)"
        )
    raise CheckpointError("\n".join(lines))


def _common_prefix(unexpected: list[str], model_keys: set[str]) -> str | None:
    """A dotted prefix (e.g. ``"model."``) whose removal makes the unexpected keys fit."""
    if not unexpected:
        return None
    for depth in (1, 2):
        heads = {".".join(k.split(".")[:depth]) + "." for k in unexpected if k.count(".") > depth}
        if len(heads) == 1:
            head = heads.pop()
            if all(k.removeprefix(head) in model_keys for k in unexpected):
                return head
    return None


def _own_format(model: nn.Module, path: Path) -> bool:
    """Load ``path`` with its format's loader when its first bytes are a registered format's
    ``magic`` (dwindle's sparse or deepc files); refuse an ONNX file, which holds a graph for
    onnxruntime."""
    with path.open("rb") as fh:
        head = fh.read(16)
    for fmt in _FORMATS.values():
        if fmt.magic and fmt.load is not None and head.startswith(fmt.magic):
            fmt.load(model, path)
            return True
    if path.suffix in (".onnx", ".onnx-int8"):
        raise CheckpointError(
            f"{str(path)!r} is an ONNX model: it runs in onnxruntime "
            "(onnxruntime.InferenceSession, or dwindle.export.check_onnx), and holds no torch "
            "weights to load; load the safetensors artifact of the same run instead"
        )
    return False


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], *, strip_prefix: str | None = None
) -> None:
    """Load a safetensors file or a ``torch.save`` state dict into ``model`` in place.

    Accepts a plain state dict or one under a ``"state_dict"``/``"model"`` key, strips a
    DataParallel ``"module."`` prefix, ignores non-tensor entries, and never unpickles objects.
    ``strip_prefix`` removes another prefix the checkpoint's keys carry (e.g. ``"model."``).
    Raises :class:`CheckpointError` naming missing/unexpected keys and shape mismatches.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is a directory; give the weights file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist; check the path")
    if _own_format(model, p):
        return
    if _is_safetensors(p):
        from safetensors.torch import load_file

        try:
            sd = load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError type
            raise CheckpointError(f"cannot read safetensors file {str(p)!r}: {exc}") from exc
    else:
        sd = _unwrap(_read_torch(p), p)
    state_keys = set(model.state_dict())
    if strip_prefix:
        if not any(k.startswith(strip_prefix) for k in sd):
            shown = ", ".join(list(sd)[:3])
            raise CheckpointError(
                f"no key of {str(p)!r} starts with strip_prefix {strip_prefix!r} (keys look like "
                f"{shown}); give the prefix they carry, or leave strip_prefix out"
            )
        sd = {k.removeprefix(strip_prefix): v for k, v in sd.items()}
    sd = _strip_prefix(sd, state_keys)
    _check_fit(sd, model, p)
    model.load_state_dict(sd, strict=False)
