"""scikit-learn's bundled 8×8 handwritten digits: a tiny, offline image dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dwindle.data.bundle import DataBundle
from dwindle.data.registry import (
    carve_val,
    check_labels,
    make_bundle,
    register_dataset,
    rng,
    split_random,
    standardize,
)

__all__: list[str] = []

_TEST_FRACTION = 0.2
# A quarter of the remaining 80 % gives the documented 60/20/20 split.
_DEFAULT_VAL = 0.25


@register_dataset("digits", root="none")
def _load_digits(
    root: Path | None, *, seed: int, val_size: int | float | None, normalize: bool
) -> DataBundle:
    """scikit-learn 8×8 digits (1797 images, 10 classes), seeded 60/20/20 split.

    There is no official test split: 20 % is held out with ``seed``, then ``val_size`` is
    carved from the remaining 80 % (default 0.25 of it, i.e. 20 % of all samples).
    """
    from sklearn.datasets import load_digits  # slow import; only when this dataset is used

    raw = load_digits()
    x = (raw.images.astype(np.float32) / np.float32(16.0))[:, None]
    y = raw.target.astype(np.int64)
    num_classes = check_labels(y, 10, "digits labels")
    n_test = round(_TEST_FRACTION * len(y))
    x_pool, y_pool, x_test, y_test = split_random(x, y, n_test, rng(seed, "test"))
    x_train, y_train, x_val, y_val = carve_val(x_pool, y_pool, val_size, _DEFAULT_VAL, seed)
    if normalize:
        standardize(x_train, x_val, x_test)
    return make_bundle("digits", (x_train, y_train), (x_val, y_val), (x_test, y_test), num_classes)
