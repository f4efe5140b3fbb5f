"""Teacher outputs cached per transfer sample, so a fixed transfer set costs one teacher pass.

Distillation runs the frozen teacher on the same inputs every epoch; with a fixed transfer set
(no augmentation) its outputs never change. The cache stores them per sample index up to a
memory bound; samples beyond the bound are recomputed, so a small bound degrades speed only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["TeacherCache"]

TeacherFn = Callable[[Tensor], dict[str, Tensor]]


class TeacherCache:
    """Per-sample store of the teacher's outputs (logits and captured features).

    ``teacher(x)`` returns a dict of batch-first tensors. ``get(indices, x)`` returns the
    outputs for the samples ``indices`` of a transfer set of ``n`` samples whose inputs are
    ``x``, running the teacher only on samples not stored yet. Storage is allocated on the first
    call and never exceeds ``max_bytes``; ``hits``/``misses`` count samples.
    """

    def __init__(self, teacher: TeacherFn, n: int, max_bytes: int) -> None:
        self.teacher, self.n, self.max_bytes = teacher, n, int(max_bytes)
        self.slot = torch.full((n,), -1, dtype=torch.long)
        self.store: dict[str, Tensor] = {}
        self.capacity = 0
        self.used = 0
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored outputs."""
        return sum(t.numel() * t.element_size() for t in self.store.values())

    def _allocate(self, sample: dict[str, Tensor]) -> None:
        per_sample = sum(t[0].numel() * t.element_size() for t in sample.values())
        self.capacity = min(self.n, self.max_bytes // max(1, per_sample))
        self.store = {
            k: torch.empty((self.capacity, *t.shape[1:]), dtype=t.dtype, device="cpu")
            for k, t in sample.items()
        }

    def get(self, indices: Tensor, x: Tensor) -> dict[str, Tensor]:
        indices = indices.cpu()
        slots = self.slot[indices]
        missing = slots < 0
        self.hits += int((~missing).sum())
        self.misses += int(missing.sum())
        if not bool(missing.any()):
            return {k: v[slots].to(x.device) for k, v in self.store.items()}
        fresh = self.teacher(x[missing.to(x.device)])
        if not self.store and self.capacity == 0:
            self._allocate(fresh)
        out = {}
        for key, value in fresh.items():
            full = value.new_empty((len(indices), *value.shape[1:]))
            full[missing.to(value.device)] = value
            if bool((~missing).any()):
                full[(~missing).to(value.device)] = self.store[key][slots[~missing]].to(full)
            out[key] = full
        self._remember(indices[missing], fresh)
        return out

    def _remember(self, indices: Tensor, fresh: dict[str, Tensor]) -> None:
        room = self.capacity - self.used
        if room <= 0:
            return
        take = min(room, len(indices))
        new_slots = torch.arange(self.used, self.used + take)
        for key, value in fresh.items():
            self.store[key][new_slots] = value[:take].detach().cpu()
        self.slot[indices[:take]] = new_slots
        self.used += take
