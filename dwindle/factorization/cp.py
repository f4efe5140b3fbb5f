"""CP (canonical polyadic) decomposition of 2-D convolutions.

Lebedev et al. 2015, "Speeding-up Convolutional Neural Networks Using Fine-tuned
CP-Decomposition" (ICLR), and Kim et al. 2016 mention it beside Tucker-2: the kernel
``W[n, c, y, x] ≈ Σ_r A[n, r]·B[c, r]·Y[y, r]·X[x, r]`` becomes four cheap layers,

    1×1 conv C→R (B) → k_h×1 depthwise conv (Y) → 1×k_w depthwise conv (X) → 1×1 conv R→N (A),

holding ``R·(C + k_h + k_w + N)`` weights instead of ``N·C·k_h·k_w``. The factors come from
alternating least squares (ALS) started from the HOSVD of each mode, computed in float64;
there is no closed form, so ``cp_decompose`` also returns the relative reconstruction error.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dwindle.errors import ConfigError
from dwindle.factorization.conv import _check_conv, _like
from dwindle.factorization.svd import _check_rank, _effective_weight

__all__ = ["cp_cost", "cp_decompose", "cp_rank_for_ratio", "cp_split"]


def cp_cost(conv: nn.Conv2d, rank: int) -> float:
    """Weights of the CP chain of rank ``rank`` (biases aside)."""
    n, c, kh, kw = conv.weight.shape
    return float(rank * (c + kh + kw + n))


def cp_rank_for_ratio(conv: nn.Conv2d, ratio: float) -> int:
    """Largest rank whose chain keeps at most ``ratio`` of the conv's weights (at least 1)."""
    n, c, kh, kw = conv.weight.shape
    return max(1, int(ratio * n * c * kh * kw // (c + kh + kw + n)))


def _khatri_rao(matrices: list[Tensor]) -> Tensor:
    """Column-wise Kronecker product; row index runs fastest over the last matrix."""
    out = matrices[0]
    for m in matrices[1:]:
        out = (out[:, None, :] * m[None, :, :]).reshape(-1, out.shape[1])
    return out


def _init_factor(w: Tensor, mode: int, rank: int, gen: torch.Generator) -> Tensor:
    unfolded = w.movedim(mode, 0).reshape(w.shape[mode], -1)
    u = torch.linalg.svd(unfolded, full_matrices=False)[0]
    if rank <= u.shape[1]:
        return u[:, :rank].clone()
    extra = torch.randn(w.shape[mode], rank - u.shape[1], generator=gen, dtype=w.dtype)
    return torch.cat([u, extra], dim=1)


@torch.no_grad()
def cp_decompose(
    weight: Tensor, rank: int, iterations: int = 50, seed: int = 0
) -> tuple[list[Tensor], float]:
    """Rank-``rank`` CP factors ``[A (N×R), B (C×R), Y (k_h×R), X (k_w×R)]`` of a 4-D kernel by
    ALS, and the relative error ``‖W − Ŵ‖ / ‖W‖``."""
    if weight.dim() != 4:
        raise ConfigError(f"cp_decompose needs a 4-D conv kernel (got shape {tuple(weight.shape)})")
    _check_rank(rank, 10**9, "cp_decompose")
    w = weight.detach().double().cpu()
    gen = torch.Generator().manual_seed(seed)
    factors = [_init_factor(w, mode, rank, gen) for mode in range(4)]
    unfoldings = [w.movedim(mode, 0).reshape(w.shape[mode], -1) for mode in range(4)]
    eye = 1e-10 * torch.eye(rank, dtype=w.dtype)
    for _ in range(iterations):
        for mode in range(4):
            others = [factors[m] for m in range(4) if m != mode]
            gram = torch.ones(rank, rank, dtype=w.dtype)
            for f in others:
                gram = gram * (f.T @ f)
            kr = _khatri_rao(others)
            factors[mode] = torch.linalg.solve(gram + eye, (unfoldings[mode] @ kr).T).T
    approx = torch.einsum("nr,cr,yr,xr->ncyx", *factors)
    error = float(torch.linalg.norm(w - approx) / torch.linalg.norm(w).clamp_min(1e-30))
    return factors, error


@torch.no_grad()
def cp_split(conv: nn.Conv2d, rank: int, iterations: int = 50) -> nn.Sequential:
    """Primitive: ``conv`` as ``Sequential(1×1 C→R, k_h×1 depthwise, 1×k_w depthwise, 1×1 R→N)``.

    The chain's relative kernel error is kept on the returned module as ``cp_error``.
    """
    conv = _check_conv(conv, "cp_split")
    n, c, kh, kw = conv.weight.shape
    _check_rank(rank, n * c * kh * kw, f"cp_split of Conv2d {c}→{n} {kh}×{kw}")
    (a, b, y, x), error = cp_decompose(_effective_weight(conv), rank, iterations)
    # balance the factors' scales so no layer carries the whole magnitude
    norms = [f.norm(dim=0).clamp_min(1e-30) for f in (a, b, y, x)]
    scale = torch.stack(norms).prod(0) ** 0.25
    a, b, y, x = (f / nrm * scale for f, nrm in zip((a, b, y, x), norms, strict=True))
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    first = _like(conv, c, rank, (1, 1), bias=False)
    vertical = _like(
        conv,
        rank,
        rank,
        (kh, 1),
        stride=(sh, 1),
        padding=(ph, 0),
        dilation=(dh, 1),
        groups=rank,
        bias=False,
    )
    horizontal = _like(
        conv,
        rank,
        rank,
        (1, kw),
        stride=(1, sw),
        padding=(0, pw),
        dilation=(1, dw),
        groups=rank,
        bias=False,
    )
    last = _like(conv, rank, n, (1, 1), bias=conv.bias is not None)
    first.weight.copy_(b.T[:, :, None, None])
    vertical.weight.copy_(y.T[:, None, :, None])
    horizontal.weight.copy_(x.T[:, None, None, :])
    last.weight.copy_(a[:, :, None, None])
    if conv.bias is not None:
        last.bias.copy_(conv.bias)
    chain = nn.Sequential(first, vertical, horizontal, last)
    chain.cp_error = error  # type: ignore[assignment]
    return chain
