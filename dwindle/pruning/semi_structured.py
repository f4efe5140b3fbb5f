"""2:4 masks made fast: PyTorch's semi-structured sparse tensors on NVIDIA GPUs.

A 2:4 mask (:func:`~dwindle.pruning.blocks.nm_mask` with n=2, m=4) is only a mask on dense
kernels. Ampere and newer GPUs have kernels that skip the zeros of exactly that pattern (cuSPARSELt
or CUTLASS behind ``torch.sparse.to_sparse_semi_structured``), storing half the values plus a
small index. :func:`to_semi_structured_` swaps the weights of 2:4-sparse ``nn.Linear`` layers for
such tensors, in place, for inference; measure the result, since small layers can be slower.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.targets import select_modules

__all__ = ["is_two_four", "to_semi_structured_"]

_DTYPES = (torch.float16, torch.bfloat16)


def is_two_four(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive input weights of each row has at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.detach().reshape(-1, 4) != 0).sum(1) <= 2).all())


def to_semi_structured_(
    model: nn.Module, targets: Sequence[str] = ("*",), exclude: Sequence[str] = ()
) -> list[str]:
    """Give every matching 2:4-sparse ``nn.Linear`` a semi-structured sparse weight (in place,
    frozen: inference only) and return the names of the layers converted.

    Each layer is checked first, so a failure leaves the model unchanged: it must be on a CUDA
    device, in fp16 or bf16 (``dw.cast_(model, dw.Precision(dtype="fp16"))``) and hold the 2:4
    pattern (``prune_`` with an N:M config); linears that are not 2:4-sparse are skipped only
    when no pattern named them explicitly.
    """
    chosen = select_modules(model, targets, exclude, (nn.Linear,))
    explicit = tuple(targets) != ("*",)
    todo: list[tuple[str, nn.Linear]] = []
    for name, layer in chosen:
        assert isinstance(layer, nn.Linear)
        w = layer.weight
        if not is_two_four(w):
            if explicit:
                raise ConfigError(
                    f"{name}: its weight {tuple(w.shape)} is not 2:4 sparse (at most 2 non-zeros "
                    "in every 4 consecutive inputs); prune it with an N:M config (n=2, m=4) first"
                )
            continue
        if w.dtype not in _DTYPES:
            raise ConfigError(
                f"{name}: semi-structured sparsity needs fp16 or bf16 weights, got {w.dtype}; "
                "cast first: dw.cast_(model, dw.Precision(dtype='fp16'))"
            )
        if w.device.type != "cuda":
            raise ConfigError(
                f"{name}: semi-structured sparse kernels run on NVIDIA GPUs only, but the weight "
                f"is on {w.device.type}; move the model first (model.to('cuda'))"
            )
        todo.append((name, layer))
    if not todo:
        raise ConfigError(
            "no 2:4-sparse nn.Linear among the matched layers; prune with an N:M config (n=2, "
            "m=4) first"
        )
    from torch.sparse import to_sparse_semi_structured

    sparse = {}
    for name, layer in todo:  # convert all before swapping any: an error changes nothing
        try:
            sparse[name] = to_sparse_semi_structured(layer.weight.detach())
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"{name}: PyTorch could not make its {tuple(layer.weight.shape)} weight "
                f"semi-structured ({exc}); exclude this layer"
            ) from exc
    for name, layer in todo:
        layer.weight = nn.Parameter(sparse[name], requires_grad=False)
    return [name for name, _ in todo]
