"""Cross-layer parameter sharing: tie the weights of identically shaped layers or blocks, as
ALBERT does across its transformer layers (Lan et al. 2020, "ALBERT", section 3.1).

Tied modules hold the *same* ``nn.Parameter`` objects, so training updates one tensor, the
state dict stores it once (safetensors drops the aliases) and parameter counts count it once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from dwindle.targets import matches

__all__ = ["tie_", "tie_groups"]

Signature = tuple[str, tuple[tuple[str, tuple[int, ...]], ...]]


def _signature(module: nn.Module) -> Signature:
    """Type and tensor shapes; buffers count too (a k-means-shared layer's weight shape is its
    index buffer's: layers of other shapes share a codebook's shape)."""
    return type(module).__name__, tuple(
        (name, tuple(t.shape)) for name, t in [*module.named_parameters(), *module.named_buffers()]
    )


def tie_groups(
    model: nn.Module, targets: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> list[list[tuple[str, nn.Module]]]:
    """Groups (≥ 2) of targeted modules with the same type and parameter shapes.

    Only the outermost matching modules are considered, so ``targets=["layers.*"]`` ties
    whole blocks rather than each of their sub-layers separately.
    """
    picked: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or not matches(name, targets) or matches(name, exclude):
            continue
        if not any(True for _ in module.parameters()):
            continue
        if any(name.startswith(p + ".") for p, _ in picked):
            continue
        picked.append((name, module))
    groups: dict[Signature, list[tuple[str, nn.Module]]] = defaultdict(list)
    for name, module in picked:
        groups[_signature(module)].append((name, module))
    return [g for g in groups.values() if len(g) > 1]


@torch.no_grad()
def tie_(
    model: nn.Module,
    targets: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    init: Literal["mean", "first"] = "mean",
) -> list[list[str]]:
    """Tie each group of :func:`tie_groups` in place; returns the tied module names per group.

    The shared tensor starts as the group's mean (``init="mean"``) or its first member's
    weights; the tied model needs training afterwards (ALBERT trains it from scratch).
    """
    tied: list[list[str]] = []
    for group in tie_groups(model, targets, exclude):
        first = group[0][1]
        for pname, param in list(first.named_parameters()):
            members = [m.get_parameter(pname) for _, m in group]
            shared = (
                param
                if init == "first"
                else nn.Parameter(
                    torch.stack([p.detach() for p in members]).mean(0), param.requires_grad
                )
            )
            for _, module in group:
                owner_name, _, leaf = pname.rpartition(".")
                owner = module.get_submodule(owner_name) if owner_name else module
                setattr(owner, leaf, shared)
        tied.append([name for name, _ in group])
    return tied
