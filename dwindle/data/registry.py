"""The dataset registry, the :func:`load` verb, and the split helpers every loader shares.

A dataset is one loader function registered under a name::

    @register_dataset("mine")
    def _load_mine(root, *, seed, val_size, normalize, size=100) -> DataBundle: ...

Keyword-only parameters other than ``seed``, ``val_size`` and ``normalize`` are the dataset's
options; :func:`load` rejects any other keyword, naming the valid ones. Loaders work in NumPy
and hand their splits to :func:`make_bundle`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dwindle._plugins import load_plugins
from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError

__all__ = [
    "DatasetSpec",
    "available_datasets",
    "carve_val",
    "check_labels",
    "dataset_spec",
    "load",
    "make_bundle",
    "register_dataset",
    "rng",
    "split_random",
    "standardize",
    "val_count",
]

Loader = Callable[..., DataBundle]
Split = tuple[np.ndarray, np.ndarray]

ROOT_MODES = ("optional", "required", "none")
_STANDARD = ("seed", "val_size", "normalize")
# Independent random streams, so e.g. changing `limit` never changes the validation split.
_STREAMS = {"val": 1, "test": 2, "limit": 3, "data": 4}
_BUILTIN_MODULES = (
    "dwindle.data.idx",
    "dwindle.data.digits",
    "dwindle.data.mnist1d",
    "dwindle.data.synthetic",
    "dwindle.data.npz",
    "dwindle.data.cifar",
)
_ENTRY_POINT_GROUP = "dwindle.datasets"


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its ``loader``, its ``options`` (name → default) and ``root`` mode.

    ``root`` is ``"optional"`` (default folders are searched), ``"required"`` or ``"none"``
    (the data is built in or generated).
    """

    name: str
    loader: Loader
    options: Mapping[str, Any]
    root: str
    summary: str


_REGISTRY: dict[str, DatasetSpec] = {}
_loaded = False


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register_dataset(
    name: str, *, root: str = "optional", summary: str | None = None
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root, *, seed, val_size, normalize, **options)``."""
    if root not in ROOT_MODES:
        raise ConfigError(f"register_dataset root={root!r}; choose one of {', '.join(ROOT_MODES)}")

    def deco(loader: Loader) -> Loader:
        params = inspect.signature(loader).parameters
        kw_only = {n: p for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        lacking = [p for p in _STANDARD if p not in kw_only]
        if lacking:
            raise ConfigError(
                f"dataset loader {loader.__qualname__} must take keyword-only parameters "
                f"{', '.join(_STANDARD)}; it lacks {', '.join(lacking)}"
            )
        options = {n: p.default for n, p in kw_only.items() if n not in _STANDARD}
        no_default = [n for n, d in options.items() if d is inspect.Parameter.empty]
        if no_default:
            raise ConfigError(
                f"dataset loader {loader.__qualname__}: options {', '.join(no_default)} "
                "need default values"
            )
        doc = summary if summary is not None else (inspect.getdoc(loader) or "").split("\n")[0]
        key = _canonical(name)
        _REGISTRY[key] = DatasetSpec(key, loader, options, root, doc)
        return loader

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    load_plugins(_BUILTIN_MODULES, _ENTRY_POINT_GROUP)
    _loaded = True


def available_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered under ``name`` (case and ``_``/``-`` insensitive)."""
    _ensure_loaded()
    if not isinstance(name, str):
        raise ConfigError(f"dataset name must be a string, got {name!r}")
    key = _canonical(name)
    if key not in _REGISTRY:
        near = difflib.get_close_matches(key, list(_REGISTRY), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"unknown dataset {name!r}{hint} (known datasets: {', '.join(sorted(_REGISTRY))})"
        )
    return _REGISTRY[key]


def load(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    val_size: int | float | None = None,
    limit: int | None = None,
    normalize: bool = True,
    **options: Any,
) -> DataBundle:
    """Load dataset ``name`` as a :class:`DataBundle` with train/val/test splits.

    ``val_size`` (count or fraction) is carved from the training split with a permutation
    seeded by ``seed``; ``None`` uses the dataset's default. ``limit`` keeps a seeded subset of
    at most that many training samples, for quick runs (val and test are untouched).
    Everything is a pure function of the arguments.
    """
    spec = dataset_spec(name)
    _check_int("seed", seed, minimum=0)
    if limit is not None:
        _check_int("limit", limit, minimum=1)
    if val_size is not None:
        val_count(val_size, None)
    if not isinstance(normalize, bool):
        raise ConfigError(f"normalize must be True or False, got {normalize!r}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        near = difflib.get_close_matches(unknown[0], list(spec.options), n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        valid = ", ".join(spec.options) if spec.options else "(none)"
        raise ConfigError(
            f"dataset {spec.name!r} has no option {unknown[0]!r}{hint}; its options are: {valid} "
            "(common arguments: root, seed, val_size, limit, normalize)"
        )
    if spec.root == "none" and root is not None:
        raise ConfigError(
            f"dataset {spec.name!r} is built in and takes no root (got root={str(root)!r}); "
            "remove root= (in a recipe: data.root)"
        )
    if spec.root == "required" and root is None:
        raise ConfigError(
            f"dataset {spec.name!r} needs a path: pass root='<path>' (in a recipe: data.root). "
            f"{spec.summary}"
        )
    path = Path(root).expanduser() if root is not None else None
    bundle = spec.loader(path, seed=seed, val_size=val_size, normalize=normalize, **options)
    return bundle if limit is None else _limit_train(bundle, limit, seed)


def _check_int(what: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}, got {value!r}")


def _limit_train(bundle: DataBundle, limit: int, seed: int) -> DataBundle:
    n = bundle.size("train")
    if limit >= n:
        return bundle
    keep = torch.from_numpy(np.sort(rng(seed, "limit").permutation(n)[:limit]))
    return dataclasses.replace(bundle, x_train=bundle.x_train[keep], y_train=bundle.y_train[keep])


def rng(seed: int, stream: str) -> np.random.Generator:
    """A NumPy generator for ``seed`` and a purpose: ``val``, ``test``, ``limit`` or ``data``."""
    return np.random.default_rng([_STREAMS[stream], seed])


def val_count(val_size: int | float, n_train: int | None) -> int:
    """Resolve ``val_size`` (int count or float fraction in [0, 1)) against ``n_train`` samples.

    With ``n_train=None`` only the type and range are checked (and 0 is returned).
    """
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.number)):
        raise ConfigError(
            f"val_size must be an int (a count) or a float in [0, 1) (a fraction), got {val_size!r}"
        )
    if isinstance(val_size, (float, np.floating)):
        if not 0 <= val_size < 1:
            raise ConfigError(
                f"val_size={val_size} is a fraction and must lie in [0, 1); "
                "pass an int for a count of samples"
            )
        count = round(val_size * n_train) if n_train is not None else 0
    else:
        if val_size < 0:
            raise ConfigError(f"val_size must be >= 0, got {val_size}")
        count = int(val_size)
    if n_train is not None and count >= n_train:
        raise ConfigError(
            f"val_size={val_size} leaves no training samples: the training split has {n_train}; "
            f"choose a count below {n_train} or a smaller fraction"
        )
    return count


def split_random(x: np.ndarray, y: np.ndarray, count: int, gen: np.random.Generator) -> tuple:
    """Move ``count`` random samples out: ``(x_rest, y_rest, x_picked, y_picked)``.

    Both parts keep the original sample order, so only the membership depends on ``gen``.
    """
    perm = gen.permutation(len(y))
    picked, rest = np.sort(perm[:count]), np.sort(perm[count:])
    return x[rest], y[rest], x[picked], y[picked]


def carve_val(
    x: np.ndarray, y: np.ndarray, val_size: int | float | None, default: int | float, seed: int
) -> tuple:
    """Split a training set into ``(x_train, y_train, x_val, y_val)`` seeded by ``seed``."""
    count = val_count(default if val_size is None else val_size, len(y))
    return split_random(x, y, count, rng(seed, "val"))


def standardize(
    train: np.ndarray, *others: np.ndarray, stats: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Standardise float arrays in place with ``stats`` (mean, std) or those of ``train``.

    One scalar mean/std over all values, as torchvision's MNIST recipe does. Returns the stats.
    """
    if stats is None:
        mean = float(train.mean(dtype=np.float64)) if train.size else 0.0
        std = float(train.std(dtype=np.float64)) if train.size else 1.0
        stats = (mean, std if std > 0 else 1.0)
    for arr in (train, *others):
        arr -= np.float32(stats[0])
        arr /= np.float32(stats[1])
    return stats


def check_labels(y: np.ndarray, num_classes: int | None, where: str) -> int:
    """Check ``y`` holds integers in ``[0, num_classes)``; return num_classes (inferred if None)."""
    if y.ndim != 1:
        raise ConfigError(f"{where}: labels must be a 1-D array, got shape {tuple(y.shape)}")
    if y.dtype.kind not in "iu":
        raise ConfigError(
            f"{where}: labels must be integers, got dtype {y.dtype}; "
            "store class indices, e.g. y.astype('int64')"
        )
    if y.size and int(y.min()) < 0:
        raise ConfigError(f"{where}: labels must be >= 0, found {int(y.min())}")
    top = int(y.max()) + 1 if y.size else 0
    if num_classes is None:
        return top
    if top > num_classes:
        raise ConfigError(
            f"{where}: label {top - 1} is out of range for num_classes={num_classes}; "
            f"labels must lie in [0, {num_classes})"
        )
    return num_classes


def make_bundle(name: str, train: Split, val: Split, test: Split, num_classes: int) -> DataBundle:
    """A :class:`DataBundle` from NumPy ``(x, y)`` splits: float32 inputs, int64 labels."""

    def tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.ascontiguousarray(split[0], dtype=np.float32)
        y = np.ascontiguousarray(split[1], dtype=np.int64)
        if not x.flags.writeable:  # torch warns on read-only buffers (np.frombuffer)
            x = x.copy()
        return torch.from_numpy(x), torch.from_numpy(y)

    x_train, y_train = tensors(train)
    x_val, y_val = tensors(val)
    x_test, y_test = tensors(test)
    return DataBundle(name, x_train, y_train, x_val, y_val, x_test, y_test, num_classes)


def check_num_classes(num_classes: int | None) -> None:
    """Validate a user-given ``num_classes`` option (None means: infer from the labels)."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
