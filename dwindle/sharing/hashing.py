"""HashedNets (Chen et al. 2015, "Compressing Neural Networks with the Hashing Trick").

A :class:`HashedLinear` has an m×n *virtual* weight matrix but only K real parameters: a hash
of each position (i, j) picks the real parameter it reads, and a second hash its sign
(ξ(i, j) ∈ {−1, +1}, the paper's sign factor that makes the inner products unbiased). Only the
K values, the bias and the seed need storing; the position → bucket map is recomputed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.errors import ConfigError

__all__ = ["HashedLinear", "hash_buckets"]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A fixed, platform-independent 64-bit mixing hash (SplitMix64's finaliser)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def hash_buckets(rows: int, cols: int, buckets: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(bucket index, sign)`` tensors of shape (rows, cols) for a hashed weight matrix."""
    position = np.arange(rows * cols, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = position ^ (np.uint64(seed) * np.uint64(0xD6E8FEB86659FD93) & _MASK64)
    h = _splitmix64(key)
    bucket = (h % np.uint64(buckets)).astype(np.int64).reshape(rows, cols)
    sign = np.where((_splitmix64(h) >> np.uint64(63)) == 0, 1.0, -1.0).astype(np.float32)
    return torch.from_numpy(bucket), torch.from_numpy(sign.reshape(rows, cols))


class HashedLinear(nn.Module):
    """A linear layer with ``real_params`` shared weights behind an ``out × in`` virtual matrix.

    Trained directly like any layer: the gradient of a real parameter is the signed sum of
    the gradients of the virtual weights hashed to it (section 4 of the paper).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        real_params: int,
        bias: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 1 <= real_params <= in_features * out_features:
            raise ConfigError(
                f"HashedLinear needs 1 ≤ real_params ≤ in×out = {in_features * out_features} "
                f"(got {real_params})"
            )
        self.in_features, self.out_features = in_features, out_features
        self.seed = seed
        bucket, sign = hash_buckets(out_features, in_features, real_params, seed)
        # derived from the seed, so not part of the state dict (nothing to store on disk)
        self.register_buffer("bucket", bucket, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(real_params).uniform_(-bound, bound))
        self.bias = (
            nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None
        )

    @property
    def real_params(self) -> int:
        return self.weight.numel()

    def virtual_weight(self) -> Tensor:
        return self.weight[self.bucket] * self.sign

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.virtual_weight(), self.bias)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, real_params: int, seed: int = 0) -> HashedLinear:
        """A hashed layer initialised from ``linear``: each real parameter is the mean of the
        signed original weights hashed to it (the least-squares fit of the original)."""
        layer = cls(
            linear.in_features, linear.out_features, real_params, linear.bias is not None, seed
        )
        layer.to(linear.weight.device)
        signed = (linear.weight.detach().float() * layer.sign).flatten()
        idx = layer.bucket.flatten()
        sums = torch.zeros(real_params).index_add_(0, idx, signed)
        counts = torch.zeros(real_params).index_add_(0, idx, torch.ones_like(signed))
        layer.weight.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), layer.weight))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"real_params={self.real_params}, seed={self.seed}"
        )
