"""DataBundle: a dataset held as in-memory tensors with deterministic splits and batching.

Keeping whole splits as tensors (no per-sample Python decode, no DataLoader workers) makes an
epoch cost the model's time, not the loader's, on small CPU machines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from dwindle.errors import ConfigError

__all__ = ["SPLITS", "DataBundle"]

SPLITS = ("train", "val", "test")

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class DataBundle:
    """Train/val/test tensors of one classification dataset.

    ``x_*`` are float32 inputs shaped ``(N, *input_shape)``; ``y_*`` int64 class labels.
    ``augment`` (optional) maps a training batch and a generator to an augmented batch.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Augment | None = None

    def __post_init__(self) -> None:
        for split in SPLITS:
            x, y = self.split(split)
            if len(x) != len(y):
                raise ConfigError(
                    f"dataset {self.name!r}: split {split!r} has {len(x)} inputs "
                    f"but {len(y)} labels"
                )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, labels)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def size(self, name: str) -> int:
        return len(self.split(name)[1])

    def batches(
        self,
        split: str,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` batches; the order is a pure function of ``seed`` when shuffled."""
        x, y = self.split(split)
        n = len(y)
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            augmented = augment and self.augment is not None
            if augmented:
                assert self.augment is not None
                xb = self.augment(xb, gen)
            if dtype is not None:
                xb = xb.to(dtype)
            self._on_batch(split, idx, augmented)
            yield xb.to(device), yb.to(device)

    def _on_batch(self, split: str, indices: torch.Tensor, augmented: bool) -> None:
        """Hook for subclasses that need to know which samples a batch holds."""

    def calib(self, n: int = 256, seed: int = 0) -> torch.Tensor:
        """``n`` training inputs chosen at random with ``seed``, for calibration."""
        x, _ = self.split("train")
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=gen)[: min(n, len(x))]
        return x[idx]

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A deterministic input batch of ``batch_size`` test samples (repeated if needed)."""
        x, _ = self.split("test")
        reps = -(-batch_size // len(x))
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size].clone()
