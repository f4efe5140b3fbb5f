"""Factorization of 2-D convolutions: spatial SVD, Tucker-2, and low rank + sparse.

- Spatial SVD (Jaderberg et al. 2014, "Speeding up Convolutional Neural Networks with Low
  Rank Expansions", scheme 2): a k_h×k_w conv becomes a k_h×1 conv to r channels then a 1×k_w
  conv, from the SVD of the kernel unfolded as (C·k_h) × (N·k_w).
- Tucker-2 (Kim et al. 2016, "Compression of Deep Convolutional Neural Networks for Fast and
  Low Power Mobile Applications"): 1×1 conv C→R_in, k×k conv R_in→R_out (the core), 1×1 conv
  R_out→N, computed here by HOSVD of the two channel modes (Kim et al. pick ranks with VBMF;
  here ranks come from the same rank/energy/ratio rules as the linear SVD).
- Low rank + sparse (Yu et al. 2017): the kernel unfolded as N × (C·k·k) is split W ≈ L + S,
  L as a k×k conv to r channels then a 1×1 conv, S as a masked conv beside them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dwindle.errors import ConfigError
from dwindle.factorization.svd import (
    LowRankPlusSparse,
    SparseResidual,
    _check_rank,
    _effective_weight,
    choose_rank,
    lowrank_sparse_decompose,
)

__all__ = [
    "conv_lowrank_sparse_split",
    "spatial_svd_split",
    "tucker2_ranks",
    "tucker2_split",
]


def _check_conv(conv: nn.Module, what: str) -> nn.Conv2d:
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"{what} needs an nn.Conv2d (got {type(conv).__name__})")
    if conv.groups != 1:
        raise ConfigError(f"{what} supports groups=1 only (got groups={conv.groups})")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ConfigError(
            f"{what} supports numeric zero padding only (got padding={conv.padding!r}, "
            f"padding_mode={conv.padding_mode!r})"
        )
    return conv


def _like(conv: nn.Conv2d, cin: int, cout: int, kernel: tuple[int, int], **kw: object) -> nn.Conv2d:
    return nn.Conv2d(
        cin,
        cout,
        kernel,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
        **kw,  # type: ignore[arg-type]
    )


def spatial_cost(conv: nn.Conv2d) -> Callable[[int], float]:
    n, c, kh, kw = conv.weight.shape
    return lambda r: float(r * (c * kh + n * kw))


def spatial_singular_values(conv: nn.Conv2d) -> Tensor:
    n, c, kh, kw = conv.weight.shape
    unfolded = _effective_weight(conv).double().permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return torch.linalg.svdvals(unfolded)


@torch.no_grad()
def spatial_svd_split(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Primitive: ``conv`` (k_h×k_w) as ``Sequential(Conv k_h×1 → r, Conv 1×k_w → N)``."""
    conv = _check_conv(conv, "spatial_svd_split")
    n, c, kh, kw = conv.weight.shape
    _check_rank(rank, min(c * kh, n * kw), f"spatial_svd_split of Conv2d {c}→{n} {kh}×{kw}")
    w = _effective_weight(conv).double()
    u, s, vh = torch.linalg.svd(w.permute(1, 2, 0, 3).reshape(c * kh, n * kw), full_matrices=False)
    root = s[:rank].sqrt()
    vertical = (u[:, :rank] * root).reshape(c, kh, rank).permute(2, 0, 1)  # r, C, kh
    horizontal = (root[:, None] * vh[:rank]).reshape(rank, n, kw).permute(1, 0, 2)  # N, r, kw
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    first = _like(
        conv, c, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False
    )
    second = _like(
        conv,
        rank,
        n,
        (1, kw),
        stride=(1, sw),
        padding=(0, pw),
        dilation=(1, dw),
        bias=conv.bias is not None,
    )
    first.weight.copy_(vertical.unsqueeze(-1))
    second.weight.copy_(horizontal.unsqueeze(2))
    if conv.bias is not None:
        second.bias.copy_(conv.bias)
    return nn.Sequential(first, second)


def _mode_svd(w: Tensor, mode: int) -> tuple[Tensor, Tensor]:
    """Left singular vectors and singular values of the mode-``mode`` unfolding."""
    unfolded = w.movedim(mode, 0).reshape(w.shape[mode], -1)
    u, s, _ = torch.linalg.svd(unfolded, full_matrices=False)
    return u, s


def tucker2_cost(conv: nn.Conv2d, r_in: int, r_out: int) -> float:
    n, c, kh, kw = conv.weight.shape
    return float(c * r_in + r_in * r_out * kh * kw + r_out * n)


def tucker2_ranks(
    conv: nn.Conv2d,
    *,
    rank: int | None = None,
    energy: float | None = None,
    ratio: float | None = None,
) -> tuple[int, int]:
    """``(R_in, R_out)`` for a config: one fixed rank for both modes (capped at C and N), the
    kept energy per mode, or the largest common fraction of C and N within ``ratio``·params."""
    conv = _check_conv(conv, "tucker2")
    n, c, kh, kw = conv.weight.shape
    w = _effective_weight(conv).double()
    if rank is not None:
        return min(rank, c), min(rank, n)
    if energy is not None:
        s_out, s_in = _mode_svd(w, 0)[1], _mode_svd(w, 1)[1]
        ones = lambda r: float(r)  # noqa: E731  (cost is irrelevant for energy)
        return (
            choose_rank(s_in, ones, energy=energy, full_cost=1.0),
            choose_rank(s_out, ones, energy=energy, full_cost=1.0),
        )
    if ratio is None:
        raise ConfigError("give one of rank, energy or ratio")
    budget = ratio * n * c * kh * kw
    best = (1, 1)
    for step in range(1, 101):
        r_in, r_out = max(1, round(c * step / 100)), max(1, round(n * step / 100))
        if tucker2_cost(conv, r_in, r_out) <= budget:
            best = (r_in, r_out)
    return best


@torch.no_grad()
def tucker2_split(conv: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    """Primitive: ``conv`` as ``Sequential(1×1 C→R_in, k×k R_in→R_out, 1×1 R_out→N)`` (HOSVD).

    At full ranks (C, N) the factor matrices are orthogonal and the chain reproduces the conv.
    """
    conv = _check_conv(conv, "tucker2_split")
    n, c, kh, kw = conv.weight.shape
    r_in, r_out = ranks
    _check_rank(r_in, c, f"tucker2_split input rank of Conv2d {c}→{n}")
    _check_rank(r_out, n, f"tucker2_split output rank of Conv2d {c}→{n}")
    w = _effective_weight(conv).double()
    u_out = _mode_svd(w, 0)[0][:, :r_out]  # N × R_out
    u_in = _mode_svd(w, 1)[0][:, :r_in]  # C × R_in
    core = torch.einsum("ncyx,no,ci->oiyx", w, u_out, u_in)
    first = _like(conv, c, r_in, (1, 1), bias=False)
    middle = _like(
        conv,
        r_in,
        r_out,
        (kh, kw),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=False,
    )
    last = _like(conv, r_out, n, (1, 1), bias=conv.bias is not None)
    first.weight.copy_(u_in.T[:, :, None, None])
    middle.weight.copy_(core)
    last.weight.copy_(u_out[:, :, None, None])
    if conv.bias is not None:
        last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def unfolded_singular_values(conv: nn.Conv2d) -> Tensor:
    n = conv.weight.shape[0]
    return torch.linalg.svdvals(_effective_weight(conv).double().reshape(n, -1))


@torch.no_grad()
def conv_lowrank_sparse_split(
    conv: nn.Conv2d, rank: int, nonzeros: int, iterations: int = 20
) -> LowRankPlusSparse:
    """Primitive: ``conv`` ≈ (k×k conv to ``rank`` channels → 1×1 conv) + a masked sparse conv."""
    conv = _check_conv(conv, "conv_lowrank_sparse_split")
    n, c, kh, kw = conv.weight.shape
    _check_rank(rank, min(n, c * kh * kw), f"conv_lowrank_sparse_split of Conv2d {c}→{n}")
    w = _effective_weight(conv)
    low, sparse = lowrank_sparse_decompose(w.reshape(n, -1), rank, nonzeros, iterations)
    u, s, vh = torch.linalg.svd(low, full_matrices=False)
    root = s[:rank].sqrt()
    geometry = {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation}
    first = _like(conv, c, rank, (kh, kw), bias=False, **geometry)
    second = _like(conv, rank, n, (1, 1), bias=conv.bias is not None)
    first.weight.copy_((root[:, None] * vh[:rank]).reshape(rank, c, kh, kw))
    second.weight.copy_((u[:, :rank] * root)[:, :, None, None])
    if conv.bias is not None:
        second.bias.copy_(conv.bias)
    residual = _like(conv, c, n, (kh, kw), bias=False, **geometry)
    residual.weight.copy_(sparse.reshape(n, c, kh, kw))
    mask = (sparse != 0).reshape(n, c, kh, kw)
    return LowRankPlusSparse(nn.Sequential(first, second), SparseResidual(residual, mask))
