"""Shared test helpers for models: non-trivial batch-norm state, silenced channels, a tiny
CIFAR ResNet and its residual-stream writers."""

from __future__ import annotations

import torch
from torch import nn

from dwindle.models import create
from dwindle.models.resnet import ResNetCifar
from dwindle.sharing import Share, share_


def randomize_bn(model: nn.Module, seed: int = 1, shift: float = 0.1) -> nn.Module:
    """Give every BatchNorm2d random statistics and affine terms, and put ``model`` in eval.

    Freshly created BN layers are the identity (mean 0, var 1, weight 1, bias 0), so a
    check that pruning or folding keeps outputs identical would pass for the wrong reason;
    ``shift`` scales the random means and biases.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * shift)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * shift)
    return model.eval()


def silence(conv: nn.Conv2d, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    """Make ``channels`` of conv→bn exactly zero (and of least L1 norm)."""
    conv.weight.data[channels] = 0
    for t in (bn.weight.data, bn.bias.data, bn.running_mean):
        t[channels] = 0


# The CIFAR ResNet's residual stages, an example input and a small batch for output checks.
STAGES = ("layer1", "layer2", "layer3")
RGB = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def tiny_resnet(depth: int = 14, width: int = 8, seed: int = 0) -> ResNetCifar:
    """A small CIFAR ResNet (2 blocks per stage) with non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    model = randomize_bn(create("resnet", depth=depth, width=width), seed=seed + 1, shift=0.3)
    assert isinstance(model, ResNetCifar)
    return model


def stream_writers(model: nn.Module, stage: str) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """The conv/bn pairs that write a stage's residual stream (the stem too for layer1)."""
    first = [(model.conv1, model.bn1)] if stage == "layer1" else []
    blocks = [b for b in getattr(model, stage) if not isinstance(b, nn.Identity)]
    return first + [(b.conv2, b.bn2) for b in blocks]


def stream_width(model: nn.Module, stage: str) -> int:
    """Channels of a stage's residual stream."""
    return stream_writers(model, stage)[-1][0].out_channels


def mlp_64(seed: int = 0) -> nn.Sequential:
    """A 64 → 48 → 32 → 4 ReLU MLP with seeded weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def magnitude_masks(model: nn.Module, keep: float) -> None:
    """Magnitude masks as dwindle.pruning leaves them: a bool ``weight_mask`` buffer."""
    for layer in model.modules():
        if isinstance(layer, nn.Linear | nn.Conv2d):
            w = layer.weight.detach()
            thr = w.abs().flatten().kthvalue(max(1, int((1 - keep) * w.numel()))).values
            mask = w.abs() > thr
            layer.register_buffer("weight_mask", mask)
            layer.weight.data.mul_(mask)


def clustered_mlp(keep: float = 0.15, bits: int = 4) -> nn.Module:
    """mlp_64 pruned to ``keep`` and clustered at ``bits``; the last layer stays a pruned Linear."""
    model = mlp_64()
    magnitude_masks(model, keep)
    share_(model, Share(bits=bits, targets=("0", "2")))
    return model
