"""Low-rank factorization of linear layers: truncated SVD and low-rank + sparse (W ≈ L + S).

A linear layer ``W`` (m×n) becomes two layers of rank r, ``S^½·Vᵀ`` (r×n) then ``U·S^½`` (m×r),
which holds ``r·(m+n)`` weights instead of ``m·n`` (Denton et al. 2014; Xue et al. 2013).
The rank comes from a fixed ``rank``, a kept ``energy`` fraction of the squared singular
values, or a ``ratio`` of the layer's parameters to keep (for a linear layer the FLOPs ratio
is the same number).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.errors import ConfigError

__all__ = [
    "LowRankPlusSparse",
    "SparseResidual",
    "choose_rank",
    "lowrank_sparse_decompose",
    "lowrank_sparse_split",
    "svd_split",
]


def _check_rank(rank: int, limit: int, where: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"{where}: rank must be a positive integer (got {rank!r})")
    if rank > limit:
        raise ConfigError(f"{where}: rank {rank} exceeds min(m, n) = {limit}")


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest r whose top-r squared singular values hold ``energy`` of the total."""
    if not 0 < energy <= 1:
        raise ConfigError(f"energy must be in (0, 1] (got {energy})")
    sq = singular_values.double() ** 2
    total = float(sq.sum())
    if total == 0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    # a tiny tolerance so energy=1.0 gives the numerical rank, not one more than exists
    return int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1


def choose_rank(
    singular_values: Tensor,
    cost: Callable[[int], float],
    *,
    rank: int | None = None,
    energy: float | None = None,
    ratio: float | None = None,
    full_cost: float,
) -> int:
    """The rank a config asks for: fixed, by kept energy, or the largest within ``ratio``·cost."""
    limit = len(singular_values)
    if rank is not None:
        return min(rank, limit)
    if energy is not None:
        return min(energy_rank(singular_values, energy), limit)
    if ratio is not None:
        fits = [r for r in range(1, limit + 1) if cost(r) <= ratio * full_cost]
        return max(fits) if fits else 1
    raise ConfigError("give one of rank, energy or ratio")


def linear_rank_cost(m: int, n: int) -> Callable[[int], float]:
    return lambda r: float(r * (m + n))


@torch.no_grad()
def svd_split(linear: nn.Linear, rank: int) -> nn.Sequential:
    """Primitive: ``linear`` as ``Sequential(Linear(n→r, no bias), Linear(r→m))`` via SVD.

    At ``rank = min(m, n)`` the pair reproduces the layer up to float rounding. A
    ``weight_mask`` buffer (pruning) is applied before the decomposition.
    """
    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"svd_split needs an nn.Linear (got {type(linear).__name__})")
    m, n = linear.out_features, linear.in_features
    _check_rank(rank, min(m, n), f"svd_split of Linear {n}→{m}")
    weight = _effective_weight(linear).double()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    root = s[:rank].sqrt()
    dtype, device = linear.weight.dtype, linear.weight.device
    first = nn.Linear(n, rank, bias=False, device=device, dtype=dtype)
    second = nn.Linear(rank, m, bias=linear.bias is not None, device=device, dtype=dtype)
    first.weight.copy_(root[:, None] * vh[:rank])
    second.weight.copy_(u[:, :rank] * root[None, :])
    if linear.bias is not None:
        second.bias.copy_(linear.bias)
    return nn.Sequential(first, second)


def _effective_weight(layer: nn.Module) -> Tensor:
    mask = layer._buffers.get("weight_mask")
    weight = layer.weight.detach()
    return weight * mask.to(weight.dtype) if mask is not None else weight


# --- low rank + sparse (Yu et al. 2017) -------------------------------------------------------


class SparseResidual(nn.Module):
    """The sparse part S of W ≈ L + S: a weight-only Linear/Conv whose ``weight_mask`` holds S's
    support (the dwindle mask convention, so non-zero counts see it), kept sparse in training."""

    def __init__(self, layer: nn.Linear | nn.Conv1d | nn.Conv2d, mask: Tensor) -> None:
        super().__init__()
        self.layer = layer
        layer.register_buffer("weight_mask", mask.bool())

    def forward(self, x: Tensor) -> Tensor:
        weight = self.layer.weight * self.layer.weight_mask
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight)
        return self.layer._conv_forward(x, weight, None)


class LowRankPlusSparse(nn.Module):
    """``low(x) + sparse(x)``: the two branches of a low-rank + sparse layer."""

    def __init__(self, low: nn.Module, sparse: SparseResidual) -> None:
        super().__init__()
        self.low = low
        self.sparse = sparse

    def forward(self, x: Tensor) -> Tensor:
        return self.low(x) + self.sparse(x)


@torch.no_grad()
def lowrank_sparse_decompose(
    weight: Tensor, rank: int, nonzeros: int, iterations: int = 20
) -> tuple[Tensor, Tensor]:
    """``(L, S)`` with rank(L) ≤ ``rank``, S holding ``nonzeros`` entries, W ≈ L + S.

    Alternating projections as in Yu et al. 2017 ("On Compressing Deep Models by Low Rank
    and Sparse Decomposition", GreBdec without the greedy rank growth): L = SVD_r(W − S),
    S = the largest-magnitude ``nonzeros`` entries of W − L.
    """
    w = weight.double()
    sparse = torch.zeros_like(w)
    low = w
    for _ in range(max(1, iterations)):
        u, s, vh = torch.linalg.svd(w - sparse, full_matrices=False)
        low = (u[:, :rank] * s[:rank]) @ vh[:rank]
        residual = w - low
        sparse = torch.zeros_like(w)
        if nonzeros > 0:
            top = residual.abs().flatten().topk(min(nonzeros, residual.numel())).indices
            sparse.view(-1)[top] = residual.view(-1)[top]
    return low, sparse


@torch.no_grad()
def lowrank_sparse_split(
    linear: nn.Linear, rank: int, nonzeros: int, iterations: int = 20
) -> LowRankPlusSparse:
    """Primitive: ``linear`` as a rank-``rank`` pair plus a sparse residual of ``nonzeros``."""
    if not isinstance(linear, nn.Linear):
        raise ConfigError(f"lowrank_sparse_split needs an nn.Linear (got {type(linear).__name__})")
    m, n = linear.out_features, linear.in_features
    _check_rank(rank, min(m, n), f"lowrank_sparse_split of Linear {n}→{m}")
    low, sparse = lowrank_sparse_decompose(_effective_weight(linear), rank, nonzeros, iterations)
    probe = nn.Linear(n, m, bias=linear.bias is not None).to(linear.weight)
    probe.weight.copy_(low)
    if linear.bias is not None:
        probe.bias.copy_(linear.bias)
    pair = svd_split(probe, rank)
    residual = nn.Linear(n, m, bias=False).to(linear.weight)
    residual.weight.copy_(sparse)
    return LowRankPlusSparse(pair, SparseResidual(residual, sparse != 0))


def lowrank_sparse_nonzeros(m: int, n: int, fraction: float) -> int:
    return math.ceil(fraction * m * n)
