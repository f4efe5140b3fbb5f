"""The user's own arrays from one ``.npz`` file (``x_train, y_train, x_test, y_test``)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dwindle.data.bundle import DataBundle
from dwindle.data.registry import (
    carve_val,
    check_labels,
    check_num_classes,
    make_bundle,
    register_dataset,
    standardize,
)
from dwindle.errors import ConfigError, DataNotFoundError

__all__ = ["REQUIRED_KEYS"]

REQUIRED_KEYS = ("x_train", "y_train", "x_test", "y_test")
_OPTIONAL_KEYS = ("x_val", "y_val")
_DEFAULT_VAL = 0.1


def _read(path: Path) -> dict[str, np.ndarray]:
    if path.is_dir():
        raise ConfigError(
            f"npz dataset: root={str(path)!r} is a directory; pass the path of the .npz file"
        )
    if not path.is_file():
        raise DataNotFoundError(
            f"npz dataset: file {path} does not exist; pass root='<file>.npz' (in a recipe: "
            "data.root), e.g. one written with np.savez(path, x_train=..., y_train=..., "
            "x_test=..., y_test=...)"
        )
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if not is_zip:  # np.load would try to read it as a pickle and blame pickling
        raise ConfigError(f"{path}: not a .npz archive (no zip header); write it with np.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ConfigError(
            f"{path}: not a readable .npz archive ({exc}); write it with np.savez"
        ) from None
    except ValueError as exc:  # object arrays need pickle, which we refuse for safety
        raise ConfigError(
            f"{path}: {exc}; store plain numeric arrays (no Python objects) in the .npz"
        ) from None


def _inputs(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.dtype.kind not in "biuf" or x.ndim < 2:
        raise ConfigError(
            f"{path}: {key} must be a numeric array shaped (N, ...), got dtype {x.dtype} "
            f"and shape {x.shape}"
        )
    out = x.astype(np.float32)  # a fresh copy: standardised in place below
    if x.dtype == np.uint8:  # image bytes, by convention
        out /= np.float32(255.0)
    return out


@register_dataset("npz", root="required")
def _load_npz(
    root: Path | None,
    *,
    seed: int,
    val_size: int | float | None,
    normalize: bool,
    num_classes: int | None = None,
) -> DataBundle:
    """Your arrays from the .npz file at root: x_train, y_train, x_test, y_test (+ x_val, y_val).

    uint8 inputs are scaled to [0, 1]; with ``normalize`` all inputs are standardised with the
    training split's mean and std. Without ``x_val``, 10 % of the training set is validation.
    ``num_classes`` defaults to the largest label + 1.
    """
    assert root is not None  # load() enforces root="required"
    check_num_classes(num_classes)
    arrays = _read(root)
    has_val = [k for k in _OPTIONAL_KEYS if k in arrays]
    needed = [k for k in REQUIRED_KEYS if k not in arrays]
    if len(has_val) == 1:  # x_val without y_val (or the reverse) is a mistake, not "no val"
        needed += [k for k in _OPTIONAL_KEYS if k not in arrays]
    if needed:
        raise ConfigError(
            f"{root}: missing key(s) {', '.join(needed)}; the file has "
            f"{', '.join(sorted(arrays)) or '(no arrays)'}; it needs "
            f"{', '.join(REQUIRED_KEYS)} (and optionally both x_val and y_val)"
        )
    if has_val and val_size is not None:
        raise ConfigError(
            f"{root}: the file has its own x_val/y_val, so val_size={val_size} cannot apply; "
            "drop val_size or remove x_val/y_val from the file"
        )

    splits = {}
    for split in ("train", "val", "test") if has_val else ("train", "test"):
        x = _inputs(arrays[f"x_{split}"], f"x_{split}", root)
        y = arrays[f"y_{split}"]
        if len(x) != len(y):
            raise ConfigError(f"{root}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        splits[split] = (x, y)
    shapes = {s: x.shape[1:] for s, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"{root}: sample shapes differ between splits: {shapes}; they must match")
    classes = max(check_labels(y, num_classes, f"{root}: y_{s}") for s, (_, y) in splits.items())
    if not has_val:
        x_tr, y_tr, x_val, y_val = carve_val(*splits["train"], val_size, _DEFAULT_VAL, seed)
        splits["train"], splits["val"] = (x_tr, y_tr), (x_val, y_val)
    if normalize:
        standardize(splits["train"][0], splits["val"][0], splits["test"][0])
    return make_bundle("npz", splits["train"], splits["val"], splits["test"], classes)
