"""MNIST-1D (Greydanus, 2020): 1-D signals of length 40 in 10 classes, generated offline.

Generating takes a few seconds, so the arrays are cached in a small ``.npz`` under
:func:`dwindle.data.paths.cache_dir`; the package's download helpers are never used.
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from dwindle._imports import require
from dwindle.data.bundle import DataBundle
from dwindle.data.paths import cache_dir
from dwindle.data.registry import carve_val, make_bundle, register_dataset, standardize
from dwindle.errors import ConfigError

__all__ = ["mnist1d_arrays", "mnist1d_cache_path"]

_KEYS = ("x_train", "y_train", "x_test", "y_test")
_FORMAT = 1  # bump when the cached layout changes
_DEFAULT_VAL = 0.1
_FEATURE = "the 'mnist1d' dataset"


def _package_version() -> str:
    try:
        return version("mnist1d")
    except PackageNotFoundError:
        require("mnist1d", "mnist1d", feature=_FEATURE)  # raises MissingExtraError
        return "unknown"


def mnist1d_cache_path(generation_seed: int = 42) -> Path:
    """Where the arrays generated with ``generation_seed`` are cached."""
    return cache_dir() / f"mnist1d-v{_FORMAT}-{_package_version()}-seed{generation_seed}.npz"


def _generate(generation_seed: int) -> dict[str, np.ndarray]:
    data_mod = require("mnist1d.data", "mnist1d", feature=_FEATURE)
    utils = require("mnist1d.utils", "mnist1d", feature=_FEATURE)
    args = data_mod.get_dataset_args(as_dict=True)
    args["seed"] = generation_seed
    # make_dataset reseeds the global `random` and NumPy generators; restore them so loading
    # data never changes the caller's random stream.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = data_mod.make_dataset(utils.ObjectView(args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x_train": data["x"].astype(np.float32)[:, None],
        "y_train": data["y"].astype(np.int64),
        "x_test": data["x_test"].astype(np.float32)[:, None],
        "y_test": data["y_test"].astype(np.int64),
    }


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in _KEYS}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache file is simply regenerated


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Temp file + os.replace: a concurrent reader sees either no file or a whole one.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        warnings.warn(
            f"could not cache mnist1d in {path.parent} ({exc}); it will be generated again "
            "next time. Set $DWINDLE_CACHE to a writable folder to cache it.",
            RuntimeWarning,
            stacklevel=3,
        )


def mnist1d_arrays(generation_seed: int = 42) -> dict[str, np.ndarray]:
    """The generated train/test arrays (``x_*`` float32 ``(N, 1, 40)``), cached on disk."""
    path = mnist1d_cache_path(generation_seed)
    arrays = _read_cache(path)
    if arrays is None:
        arrays = _generate(generation_seed)
        _write_cache(path, arrays)
    return arrays


@register_dataset("mnist1d", root="none")
def _load_mnist1d(
    root: Path | None,
    *,
    seed: int,
    val_size: int | float | None,
    normalize: bool,
    generation_seed: int = 42,
) -> DataBundle:
    """MNIST-1D signals (N, 1, 40), 10 classes: 4000 train (10 % of it val) / 1000 test.

    ``generation_seed`` seeds the generator (42 reproduces the published dataset); ``seed``
    only picks the validation split. The package already centres and scales the signals;
    ``normalize`` re-standardises them with the training split's stats (nearly a no-op).
    """
    if (
        isinstance(generation_seed, bool)
        or not isinstance(generation_seed, int)
        or not (0 <= generation_seed < 2**32)
    ):
        raise ConfigError(
            f"mnist1d option generation_seed must be an integer in [0, 2**32), "
            f"got {generation_seed!r}"
        )
    arrays = mnist1d_arrays(generation_seed)
    x_pool, y_pool = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"].copy(), arrays["y_test"]
    x_train, y_train, x_val, y_val = carve_val(x_pool, y_pool, val_size, _DEFAULT_VAL, seed)
    if normalize:
        standardize(x_train, x_val, x_test)
    return make_bundle("mnist1d", (x_train, y_train), (x_val, y_val), (x_test, y_test), 10)
