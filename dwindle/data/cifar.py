"""CIFAR-10, binary version (``data_batch_1..5.bin`` and ``test_batch.bin``, plain or ``.gz``).

Each record is one label byte then 3072 pixel bytes (R, G, B planes of 32×32), as in the
official release. Inputs are kept in memory as float32 tensors and augmented per batch (random
crop with 4-pixel padding and horizontal flip, the standard CIFAR recipe) so an epoch costs the
model's time, not the loader's.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dwindle.data.bundle import DataBundle
from dwindle.data.paths import locate
from dwindle.data.registry import carve_val, make_bundle, register_dataset
from dwindle.errors import ConfigError

__all__ = ["CIFAR_MEAN_STD", "check_mean_std", "crop_flip", "read_cifar_batch", "scale_images"]

_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_TEST = "test_batch.bin"
_RECORD = 1 + 3 * 32 * 32
# The published CIFAR ResNet checkpoints this project reproduces were trained with the
# ImageNet constants; they are the default so those checkpoints load and score as published.
CIFAR_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 binary version)"


def _find(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing(directory: Path) -> list[str]:
    return [n for n in (*_TRAIN, _TEST) if _find(directory, n) is None]


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N,3,32,32), labels int64)`` of one binary batch file."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ConfigError(f"{path}: damaged gzip file ({exc}); download it again") from None
    if not raw or len(raw) % _RECORD:
        raise ConfigError(
            f"{path}: {len(raw)} bytes is not a whole number of {_RECORD}-byte CIFAR-10 records "
            f"(an official batch file holds 10,000 records: {10_000 * _RECORD:,} bytes); the "
            "file is truncated or not the binary version: download it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ConfigError(f"{path}: label {labels.max()} outside 0..9; not a CIFAR-10 batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of each image from a zero-padded copy, then a random horizontal flip."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    crops = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    crops[flip] = crops[flip].flip(-1)
    return crops


def scale_images(
    x: np.ndarray, mean_std: tuple[Sequence[float], Sequence[float]] | None
) -> np.ndarray:
    """uint8 CIFAR images as float32 in [0, 1], then per channel ``(x - mean) / std`` when
    ``mean_std`` is given."""
    out = x.astype(np.float32) / np.float32(255.0)
    if mean_std is not None:
        m, sd = (np.asarray(v, np.float32)[None, :, None, None] for v in mean_std)
        out = (out - m) / sd
    return out


def check_mean_std(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int = 3
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel normalisation constants (defaults: :data:`CIFAR_MEAN_STD`), validated."""
    out = []
    for name, given, default in (
        ("mean", mean, CIFAR_MEAN_STD[0]),
        ("std", std, CIFAR_MEAN_STD[1]),
    ):
        if given is None:
            out.append(default)
            continue
        try:
            values = tuple(float(v) for v in given)
        except (TypeError, ValueError):
            raise ConfigError(
                f"normalisation {name} must be a list of {channels} numbers (one per channel, "
                f"R, G, B), got {given!r}"
            ) from None
        if len(values) != channels:
            raise ConfigError(
                f"normalisation {name} has {len(values)} value(s) but CIFAR-10 images have "
                f"{channels} channels (R, G, B); give one per channel, e.g. {name}="
                f"{list(default)}"
            )
        if name == "std" and any(v <= 0 for v in values):
            raise ConfigError(
                f"normalisation std must be > 0 for every channel, got {list(values)}"
            )
        out.append(values)
    return out[0], out[1]


@register_dataset("cifar10")
def _load_cifar10(
    root: Path | None,
    *,
    seed: int,
    val_size: int | float | None,
    normalize: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DataBundle:
    """CIFAR-10 (50,000 train / 10,000 test, 3×32×32), default 5,000 held out for validation.

    ``normalize`` subtracts ``mean`` and divides by ``std`` per channel (defaults: the
    constants in :data:`CIFAR_MEAN_STD`, which the published checkpoints were trained with);
    training batches are augmented (crop + flip) when the trainer asks for augmentation.
    """
    mean_std = check_mean_std(mean, std)
    directory = locate(
        "cifar10",
        root,
        _missing,
        expected=[f"{n}[.gz]" for n in (*_TRAIN, _TEST)],
        source=_SOURCE,
    )
    parts = [read_cifar_batch(_find(directory, n)) for n in _TRAIN]  # type: ignore[arg-type]
    x_pool = np.concatenate([p[0] for p in parts])
    y_pool = np.concatenate([p[1] for p in parts])
    x_test, y_test = read_cifar_batch(_find(directory, _TEST))  # type: ignore[arg-type]

    def scale(x: np.ndarray) -> np.ndarray:
        return scale_images(x, mean_std if normalize else None)

    x_train, y_train, x_val, y_val = carve_val(x_pool, y_pool, val_size, 5000, seed)
    bundle = make_bundle(
        "cifar10",
        (scale(x_train), y_train),
        (scale(x_val), y_val),
        (scale(x_test), y_test),
        10,
    )
    bundle.augment = crop_flip
    return bundle
