"""Non-uniform codebooks: k-means (Han et al. 2016, Deep Compression §3) and log-scale.

A codebook is a 1-D tensor of at most ``2**bits`` float levels; each weight is stored as the
``bits``-bit index of its nearest level. K-means places the levels where the weights are dense;
the log-scale (power-of-two) codebook of Miyashita et al. 2016 ("Convolutional Neural Networks
using Logarithmic Data Representation") spends its levels near zero and lets a multiply become
a shift.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dwindle.quantization.fake_quant import check_bits

__all__ = ["CODEBOOK_BITS", "assign", "codebook_quant", "kmeans_codebook", "log_codebook"]

CODEBOOK_BITS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)


def kmeans_codebook(w: Tensor, bits: int, iters: int = 25) -> Tensor:
    """``2**bits`` (or fewer, when there are fewer distinct values) levels by 1-D Lloyd k-means.

    Linear initialisation over ``[min, max]``, which Han et al. found best: it keeps the rare
    large weights, which matter most, represented.
    """
    check_bits(bits, CODEBOOK_BITS)
    values = w.detach().float().reshape(-1)
    k = min(2**bits, int(values.unique().numel()))
    centers = torch.linspace(float(values.min()), float(values.max()), k)
    for _ in range(iters):
        idx = assign(values, centers)
        sums = torch.zeros(k).index_add_(0, idx, values)
        counts = torch.zeros(k).index_add_(0, idx, torch.ones_like(values))
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
        if torch.allclose(moved, centers):
            break
        centers = moved
    return centers.unique()  # sorted; empty clusters that merged are dropped


def log_codebook(w: Tensor, bits: int) -> Tensor:
    """0 and ``±max|w| · 2^-i`` for ``i = 0 .. 2^(bits-1) - 2``: ``2**bits - 1`` levels."""
    check_bits(bits, tuple(b for b in CODEBOOK_BITS if b >= 2))
    top = float(w.detach().abs().max().clamp_min(1e-12))
    mags = top * 2.0 ** -torch.arange(2 ** (bits - 1) - 1, dtype=torch.float32)
    return torch.cat([-mags, torch.zeros(1), mags]).sort().values


def assign(w: Tensor, codebook: Tensor) -> Tensor:
    """Index (int64, same shape as ``w``) of the nearest codebook level for each value."""
    flat = w.detach().float().reshape(-1)
    cb = codebook.float().sort().values
    mids = (cb[1:] + cb[:-1]) / 2
    idx = torch.bucketize(flat, mids)
    # map back to the caller's codebook order when it was not sorted
    order = codebook.float().argsort()
    return order[idx].reshape(w.shape)


class _CodebookSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, codebook: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
        return codebook.to(w.dtype)[assign(w, codebook)]

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[no-untyped-def]
        return grad, None


def codebook_quant(w: Tensor, codebook: Tensor) -> Tensor:
    """``w`` snapped to its nearest codebook levels, with a straight-through gradient."""
    return _CodebookSTE.apply(w, codebook)
