"""Parameter and non-zero counts and sparsity (mask-aware, tied weights counted once)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "count_nonzeros",
    "count_params",
    "sparsity",
    "weight_density",
]

# Pruning keeps a mask next to the weight: dwindle's convention is a buffer "<param>_mask";
# torch.nn.utils.prune renames the parameter "<param>_orig" and keeps "<param>_mask".
_MASK_SUFFIX = "_mask"
_ORIG_SUFFIX = "_orig"


def _key(t: torch.Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    """Identity of the memory a tensor views, so tied weights count once."""
    ptr = t.untyped_storage().data_ptr() if t.numel() else id(t)
    return (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _own_counts(model: nn.Module, hook: str) -> tuple[int, set[int]]:
    """Sum of ``hook()`` over the outermost modules that define it (a wrapped runtime such as an
    onnxruntime session, or a layer holding packed weight codes in buffers), and the ids of the
    modules they cover, whose parameters are then not counted again."""
    total, covered = 0, set()
    for module in model.modules():
        if id(module) in covered:
            continue
        count = getattr(module, hook, None)
        if callable(count):
            total += int(count())
            covered.update(id(m) for m in module.modules())
    return total, covered


def _computed(module: nn.Module, seen: set[Any], nonzero: bool) -> tuple[int, tuple[str, ...]]:
    """A weight computed by a property from ``dwindle_weight_sources`` (a shared layer's
    ``codebook[indices]``) counts its own entries, once per set of source tensors (tied layers
    share them); returns that count and the source names the caller must not count again."""
    names = tuple(getattr(module, "dwindle_weight_sources", ()))
    if not names or not computed_weight(module):
        return 0, ()
    tensors = [module._parameters.get(n, module._buffers.get(n)) for n in names]
    key = tuple(_key(t) for t in tensors if isinstance(t, torch.Tensor))
    if key in seen:
        return 0, names
    seen.add(key)
    with torch.no_grad():
        w = module.weight
    return (_nonzeros(w, None) if nonzero else w.numel()), names


def _count(model: nn.Module, nonzero: bool) -> int:
    total, covered = _own_counts(
        model, "dwindle_nonzero_count" if nonzero else "dwindle_param_count"
    )
    seen: set[Any] = set()
    for module in model.modules():
        if id(module) in covered:
            continue
        n, sources = _computed(module, seen, nonzero)
        total += n
        for name, p in module._parameters.items():
            if p is None or name in sources or (k := _key(p)) in seen:
                continue
            seen.add(k)
            total += _nonzeros(p, _mask_for(module, name)) if nonzero else p.numel()
    return total


def count_params(model: nn.Module) -> int:
    """Number of parameter entries, counting shared (tied) tensors once. Buffers are excluded,
    except where a module counts its own weights (``dwindle_param_count``: packed codes) or
    computes its weight from them (``dwindle_weight_sources``: a k-means-shared layer counts
    its weight's entries, not its codebook's)."""
    return _count(model, nonzero=False)


def _mask_for(module: nn.Module, name: str) -> torch.Tensor | None:
    base = name[: -len(_ORIG_SUFFIX)] if name.endswith(_ORIG_SUFFIX) else name
    mask = module._buffers.get(base + _MASK_SUFFIX)
    return mask if isinstance(mask, torch.Tensor) else None


def _nonzeros(p: torch.Tensor, mask: torch.Tensor | None) -> int:
    nz = p.detach() != 0
    if mask is not None:
        nz = nz & (mask.detach() != 0)
    return int(nz.sum().item())


def count_nonzeros(model: nn.Module) -> int:
    """Non-zero parameter entries; a weight with a ``<name>_mask`` buffer counts ``weight*mask``
    (a computed weight, as in :func:`count_params`, counts its non-zero entries)."""
    return _count(model, nonzero=True)


def sparsity(model: nn.Module) -> float:
    """Fraction of parameter entries that are zero (0.0 for a model without parameters)."""
    n = count_params(model)
    return 0.0 if n == 0 else 1.0 - count_nonzeros(model) / n


def weight_density(module: nn.Module) -> float:
    """Non-zero fraction of ``module.weight`` (mask-aware; a weight computed by a property, as
    a shared layer's ``codebook[indices]``, counts its zeros too); 1.0 when it has no weight."""
    for name in ("weight", "weight" + _ORIG_SUFFIX):
        p = module._parameters.get(name)
        if isinstance(p, torch.Tensor) and p.numel():
            return _nonzeros(p, _mask_for(module, name)) / p.numel()
    if computed_weight(module):
        w = module.weight
        if isinstance(w, torch.Tensor) and w.numel():
            return _nonzeros(w, None) / w.numel()
    return 1.0


def computed_weight(module: nn.Module) -> bool:
    """Whether ``module.weight`` is a property (a weight built from other tensors)."""
    return isinstance(getattr(type(module), "weight", None), property)
