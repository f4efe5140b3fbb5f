"""CIFAR-style ResNets (He et al. 2016, §4.2) with parameter-free "option A" shortcuts.

Module names follow Idelbayev's ``pytorch_resnet_cifar10`` (``conv1, bn1, layer1.0.conv1, ...,
linear``) so its published checkpoints load after stripping DataParallel's ``module.`` prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dwindle.errors import ModelSpecError
from dwindle.models.zoo import check_positive, register_model, resolve_input_shape

__all__ = ["BasicBlock", "DownsampleA", "ResNetCifar", "resnet", "resnet20", "resnet56"]


class DownsampleA(nn.Module):
    """Option-A shortcut: take every 2nd pixel, zero-pad ``pad`` channels on each side.

    A module rather than a lambda so the model pickles and deep-copies.
    """

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # Option A assumes the stage doubles the width while halving the resolution.
            self.shortcut = DownsampleA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """conv1 → 3 stages of ``n`` BasicBlocks (width w, 2w, 4w) → global avg pool → linear."""

    def __init__(
        self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3, width: int = 16
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.in_planes = width
        self.layer1 = self._make_layer(width, blocks_per_stage, 1)
        self.layer2 = self._make_layer(2 * width, blocks_per_stage, 2)
        self.layer3 = self._make_layer(4 * width, blocks_per_stage, 2)
        self.linear = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def _build(
    name: str,
    depth: int,
    num_classes: int,
    input_shape: Sequence[int] | None,
    in_channels: int | None,
    width: int,
) -> ResNetCifar:
    check_positive(name, "num_classes", num_classes)
    check_positive(name, "width", width)
    if width % 2:
        raise ModelSpecError(
            f"{name}: width must be even so option-A shortcuts can pad channels (got {width})"
        )
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ModelSpecError(
            f"{name}: depth must be 6n+2 with n ≥ 1, e.g. 20, 32, 44, 56 or 110 (got {depth!r})"
        )
    c, h, w = resolve_input_shape(name, input_shape, in_channels, (3, 32, 32), ndim=3)
    if h < 4 or w < 4:
        raise ModelSpecError(f"{name}: input {h}×{w} is too small; it needs at least 4×4")
    return ResNetCifar((depth - 2) // 6, num_classes, c, width)


@register_model("resnet", "CIFAR ResNet (depth 6n+2: 20, 32, 44, 56, 110), option-A shortcuts")
def resnet(
    num_classes: int = 10,
    depth: int = 20,
    width: int = 16,
    input_shape: Sequence[int] | None = None,
    in_channels: int | None = None,
) -> ResNetCifar:
    """CIFAR ResNet of ``depth`` layers and base ``width`` for ``(C, H, W)`` images."""
    return _build("resnet", depth, num_classes, input_shape, in_channels, width)


@register_model("resnet20", "CIFAR ResNet-20 (269,722 params); published checkpoint loads")
def resnet20(
    num_classes: int = 10,
    width: int = 16,
    input_shape: Sequence[int] | None = None,
    in_channels: int | None = None,
) -> ResNetCifar:
    """ResNet-20 (3 blocks per stage)."""
    return _build("resnet20", 20, num_classes, input_shape, in_channels, width)


@register_model("resnet56", "CIFAR ResNet-56 (853,018 params); published checkpoint loads")
def resnet56(
    num_classes: int = 10,
    width: int = 16,
    input_shape: Sequence[int] | None = None,
    in_channels: int | None = None,
) -> ResNetCifar:
    """ResNet-56 (9 blocks per stage)."""
    return _build("resnet56", 56, num_classes, input_shape, in_channels, width)
