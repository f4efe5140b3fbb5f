"""Shared pieces of the trainer tests: a tiny separable problem and a tiny MLP."""

from __future__ import annotations

import torch
from torch import nn

from dwindle.data.bundle import DataBundle
from dwindle.models import create

N_TRAIN, BATCH = 384, 64  # 6 steps per epoch
FAST = {"batch_size": BATCH, "progress": False, "lr": 0.05}


def make_bundle(seed: int = 0, flip_val: bool = False, n_val: int = 192) -> DataBundle:
    """Three well-separated Gaussian blobs in 16-d, shaped like tiny 1×4×4 images."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 1, 4, 4, generator=gen)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=gen)
        return centers[y] + 0.5 * torch.randn(n, 1, 4, 4, generator=gen), y

    (xt, yt), (xv, yv), (xs, ys) = split(N_TRAIN), split(n_val), split(192)
    if flip_val:
        yv = (yv + 1) % 3  # the better the model fits train, the worse it does on val
    return DataBundle("toy", xt, yt, xv, yv, xs, ys, num_classes=3)


def make_model(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return create("mlp", num_classes=3, input_shape=(1, 4, 4), hidden=(32,), **kwargs)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
