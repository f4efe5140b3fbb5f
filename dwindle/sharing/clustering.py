"""Weight sharing by k-means clustering (Han et al. 2016, "Deep Compression", section 3).

Each targeted layer's weights are clustered into ``2**bits`` centroids with 1-D k-means
(linear, density or random initialisation; the paper finds linear best). The layer then
stores a codebook of centroids and, per weight, an index into it; a ``weight_mask`` buffer
left by pruning is kept, so pruned weights stay exactly zero and are not clustered.

The codebook is the layer's only weight parameter and the weight is ``codebook[indices]``,
so back-propagation sums the gradients of all weights of a cluster into their centroid:
exactly the paper's centroid fine-tuning, done by autograd inside any training loop (the
pipeline's ``finetune:`` included), and the layer can never hold more than k distinct values.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dwindle.errors import ConfigError

__all__ = ["CLUSTERABLE_TYPES", "ClusteredLayer", "cluster_layer", "kmeans_1d"]

CLUSTERABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
Init = Literal["linear", "density", "random"]


def _initial_centroids(values: Tensor, k: int, init: Init, seed: int) -> Tensor:
    if init == "linear":
        return torch.linspace(float(values.min()), float(values.max()), k, dtype=values.dtype)
    if init == "density":
        # evenly spaced on the CDF's y axis, mapped back to x (the paper's "density-based")
        qs = (torch.arange(k, dtype=values.dtype) + 0.5) / k
        return torch.quantile(values, qs) if len(values) < 16_000_000 else values[:k]
    gen = torch.Generator().manual_seed(seed)
    return values[torch.randperm(len(values), generator=gen)[:k]].clone()


def _assign(values: Tensor, centroids: Tensor) -> Tensor:
    order = torch.argsort(centroids)
    ordered = centroids[order]
    bounds = (ordered[1:] + ordered[:-1]) / 2
    return order[torch.searchsorted(bounds, values)]


@torch.no_grad()
def kmeans_1d(
    values: Tensor, k: int, init: Init = "linear", *, iterations: int = 50, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(centroids, assignment)`` of Lloyd's k-means on the 1-D ``values`` (float64 inside).

    Raises :class:`ConfigError` when ``k`` exceeds the number of distinct values.
    """
    flat = values.detach().flatten().double()
    distinct = int(torch.unique(flat).numel())
    if k < 1 or k > distinct:
        raise ConfigError(
            f"cannot make {k} clusters from {distinct} distinct weight values; use fewer bits"
        )
    centroids = _initial_centroids(flat, k, init, seed)
    assign = _assign(flat, centroids)
    for _ in range(iterations):
        sums = torch.zeros(k, dtype=flat.dtype).index_add_(0, assign, flat)
        counts = torch.zeros(k, dtype=flat.dtype).index_add_(0, assign, torch.ones_like(flat))
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        new = _assign(flat, centroids)
        if torch.equal(new, assign):
            break
        assign = new
    return centroids, assign


def _index_dtype(k: int) -> torch.dtype:
    return torch.uint8 if k <= 256 else torch.int16 if k <= 32768 else torch.int32


class ClusteredLayer(nn.Module):
    """A Linear/Conv1d/Conv2d whose weight is ``codebook[indices]`` (zero where masked).

    ``codebook`` (k) and ``bias`` are the trainable parameters; ``indices`` (uint8 up to 256
    clusters) and the optional boolean ``weight_mask`` are buffers. ``weight`` is a read-only
    property giving the dense effective weight, so code reading ``layer.weight`` still works.
    Parameter counts count that weight's entries (sharing changes what a weight costs to
    store, not how many the layer has), not the codebook: see ``dwindle_weight_sources``.
    """

    # the tensors ``weight`` is computed from: counts read ``weight`` instead of these
    dwindle_weight_sources = ("codebook", "indices", "weight_mask")

    def __init__(
        self, layer: nn.Module, centroids: Tensor, indices: Tensor, mask: Tensor | None
    ) -> None:
        super().__init__()
        if not isinstance(layer, CLUSTERABLE_TYPES):
            raise ConfigError(f"cannot cluster a {type(layer).__name__}")
        weight = layer.weight
        self.kind = "linear" if isinstance(layer, nn.Linear) else f"conv{layer.weight.dim() - 2}d"
        if self.kind != "linear":
            if layer.padding_mode != "zeros":
                raise ConfigError(
                    f"cannot cluster a conv with padding_mode={layer.padding_mode!r}; "
                    "only 'zeros' is supported"
                )
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups
        self.codebook = nn.Parameter(centroids.to(weight.dtype).to(weight.device).clone())
        self.register_buffer(
            "indices", indices.to(_index_dtype(len(centroids))).reshape(weight.shape)
        )
        if mask is not None:
            self.register_buffer("weight_mask", mask.bool().reshape(weight.shape).clone())
        else:
            self.weight_mask: Tensor | None = None
        bias = getattr(layer, "bias", None)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def weight(self) -> Tensor:
        if torch.is_grad_enabled():
            return self._dense()
        # inference: the gather costs more than the matmul, so reuse the dense weight until
        # the codebook, indices or mask change (their version counters say when)
        key = (
            self.codebook._version,
            self.indices._version,
            self.codebook.device,
            None if self.weight_mask is None else self.weight_mask._version,
        )
        cache = self.__dict__.get("_dense_cache")
        if cache is None or cache[0] != key:
            cache = (key, self._dense())
            self.__dict__["_dense_cache"] = cache
        return cache[1]

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {k: v for k, v in state.items() if k != "_dense_cache"}

    def _dense(self) -> Tensor:
        w = self.codebook[self.indices.long()]
        if self.weight_mask is not None:
            w = torch.where(self.weight_mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
        return w

    @property
    def clusters(self) -> int:
        return self.codebook.numel()

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if self.kind == "linear":
            return F.linear(x, w, self.bias)
        conv = F.conv1d if self.kind == "conv1d" else F.conv2d
        return conv(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        masked = "" if self.weight_mask is None else ", masked"
        return f"{self.kind}, shape={tuple(self.indices.shape)}, clusters={self.clusters}{masked}"


@torch.no_grad()
def cluster_layer(
    layer: nn.Module, bits: int, init: Init = "linear", *, iterations: int = 50, seed: int = 0
) -> ClusteredLayer:
    """Primitive: ``layer`` with its (unmasked) weights clustered into ``2**bits`` centroids."""
    if not isinstance(layer, CLUSTERABLE_TYPES):
        raise ConfigError(
            f"cannot cluster a {type(layer).__name__}; supported: Linear, Conv1d, Conv2d"
        )
    weight = layer.weight.detach()
    mask = layer._buffers.get("weight_mask")
    keep = mask.bool() if mask is not None else torch.ones_like(weight, dtype=torch.bool)
    centroids, assign = kmeans_1d(weight[keep], 2**bits, init, iterations=iterations, seed=seed)
    indices = torch.zeros(weight.shape, dtype=torch.long, device=weight.device)
    indices[keep] = assign  # pruned positions keep index 0; the mask zeroes them
    return ClusteredLayer(layer, centroids, indices, mask)
