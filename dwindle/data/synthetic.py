"""Gaussian class blobs: a learnable, deterministic dataset of any input shape, made in memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dwindle.data.bundle import DataBundle
from dwindle.data.registry import (
    carve_val,
    make_bundle,
    register_dataset,
    rng,
    split_random,
    standardize,
)
from dwindle.errors import ConfigError

__all__: list[str] = []

_TEST_FRACTION = 0.2
_DEFAULT_VAL = 0.1


def _positive_int(what: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"synthetic option {what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@register_dataset("synthetic", root="none")
def _load_synthetic(
    root: Path | None,
    *,
    seed: int,
    val_size: int | float | None,
    normalize: bool,
    n_samples: int = 2000,
    num_classes: int = 10,
    shape: Sequence[int] = (1, 8, 8),
    noise: float = 1.0,
) -> DataBundle:
    """Gaussian blobs around one random centre per class; 20 % test, 10 % of the rest val.

    Centres are standard normal per input value, samples add ``noise``-scaled normal noise,
    so a small model separates the classes easily at the default ``noise=1``.
    """
    n_samples = _positive_int("n_samples", n_samples, minimum=5)
    num_classes = _positive_int("num_classes", num_classes, minimum=2)
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or not shape:
        raise ConfigError(
            f"synthetic option shape must be a list of ints like [1, 8, 8], got {shape!r}"
        )
    dims = tuple(_positive_int("shape entries", d) for d in shape)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ConfigError(f"synthetic option noise must be a number >= 0, got {noise!r}")

    gen = rng(seed, "data")
    features = math.prod(dims)
    centres = gen.standard_normal((num_classes, features))
    # Balanced classes, then shuffled, so every class appears in every split.
    y = gen.permutation(np.arange(n_samples) % num_classes).astype(np.int64)
    x = centres[y] + noise * gen.standard_normal((n_samples, features))
    x = x.astype(np.float32).reshape(n_samples, *dims)

    n_test = max(1, round(_TEST_FRACTION * n_samples))
    x_pool, y_pool, x_test, y_test = split_random(x, y, n_test, rng(seed, "test"))
    x_train, y_train, x_val, y_val = carve_val(x_pool, y_pool, val_size, _DEFAULT_VAL, seed)
    if normalize:
        standardize(x_train, x_val, x_test)
    return make_bundle(
        "synthetic", (x_train, y_train), (x_val, y_val), (x_test, y_test), num_classes
    )
