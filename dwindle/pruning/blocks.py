"""Block masks (e.g. 4×1, 8×8) and N:M semi-structured masks (e.g. 2:4).

Weights are seen as a matrix ``(out, in·k…)``. Block pruning scores each block by its mean
|w| and drops whole blocks, which sparse kernels can skip block by block. N:M keeps the N
largest of every M consecutive weights along the input dimension, the pattern of NVIDIA's
sparse tensor cores (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks").
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from dwindle.errors import ConfigError

__all__ = ["expand_tile_mask", "nm_mask", "tile_scores"]


def _as_matrix(weight: Tensor) -> Tensor:
    return weight.detach().reshape(weight.shape[0], -1)


def tile_scores(weight: Tensor, block: tuple[int, int]) -> Tensor:
    """Mean |w| of each ``block = (rows, cols)`` tile of the ``(out, in·k…)`` weight matrix.

    Edge tiles that the block does not divide are averaged over their real entries only.
    """
    rows, cols = block
    mat = _as_matrix(weight).abs().float()
    pad = (0, -mat.shape[1] % cols, 0, -mat.shape[0] % rows)
    padded = F.pad(mat, pad)[None, None]
    ones = F.pad(torch.ones_like(mat), pad)[None, None]
    sums = F.avg_pool2d(padded, block, stride=block, divisor_override=1)
    counts = F.avg_pool2d(ones, block, stride=block, divisor_override=1)
    return (sums / counts)[0, 0]


def expand_tile_mask(mask: Tensor, block: tuple[int, int], shape: torch.Size) -> Tensor:
    """Blow a per-block boolean mask up to a weight of ``shape`` (cropping edge tiles)."""
    rows, cols = block
    out, rest = shape[0], math.prod(shape[1:])
    full = mask.repeat_interleave(rows, 0).repeat_interleave(cols, 1)[:out, :rest]
    return full.reshape(shape)


def nm_mask(weight: Tensor, n: int, m: int, where: str = "weight") -> Tensor:
    """Keep the ``n`` largest-|w| of every ``m`` consecutive weights along the input dimension.

    For convolutions the groups run over input channels at each kernel position. Raises
    :class:`ConfigError` (naming ``where``) when the input dimension is not divisible by ``m``.
    """
    if not 0 < n < m:
        raise ConfigError(f"N:M sparsity needs 0 < n < m (got n={n}, m={m})")
    if weight.dim() < 2 or weight.shape[1] % m:
        dim = weight.shape[1] if weight.dim() >= 2 else weight.numel()
        raise ConfigError(
            f"N:M sparsity {n}:{m} needs the input dimension of {where} to be divisible by "
            f"m={m}, but it is {dim} (weight shape {tuple(weight.shape)}); exclude this layer"
        )
    # (out, in, *k) -> (out, *k, in) so that groups of m run along input channels.
    moved = weight.detach().abs().movedim(1, -1)
    groups = moved.reshape(-1, m)
    keep = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return mask.reshape(moved.shape).movedim(-1, 1).contiguous()
