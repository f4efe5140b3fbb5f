"""The IDX file format (MNIST and friends): a reader, a writer, and the datasets stored in it.

IDX: two zero bytes, a dtype code, the number of dimensions, then each dimension as a
big-endian uint32, then the values in C order (big-endian). MNIST images are ``0x00000803``
(uint8, 3-D), labels ``0x00000801`` (uint8, 1-D).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from dwindle.data.bundle import DataBundle
from dwindle.data.paths import locate
from dwindle.data.registry import (
    carve_val,
    check_labels,
    check_num_classes,
    make_bundle,
    register_dataset,
    standardize,
)
from dwindle.errors import ConfigError, DataNotFoundError

__all__ = ["IDX_FILES", "find_idx_file", "parse_idx", "read_idx", "write_idx"]

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}

# Logical file -> canonical name; the dotted variant ("train-images.idx3-ubyte") and ".gz"
# are accepted too, because mirrors of MNIST spell them both ways.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "kmnist": "https://github.com/rois-codh/kmnist",
    "idx": "your own IDX files (any dataset stored in the MNIST file layout)",
}
# torchvision's MNIST normalisation; other IDX datasets use their training split's stats.
_MNIST_STATS = (0.1307, 0.3081)
_MNIST_VAL = 5000


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file into an array of native byte order."""
    fix = "the file is corrupt or not an IDX file; delete it and download it again"
    if len(data) < 4:
        raise ConfigError(f"{source}: {len(data)} bytes is too short for an IDX header; {fix}")
    magic = int.from_bytes(data[:4], "big")
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or code not in _DTYPES or ndim == 0:
        raise ConfigError(
            f"{source}: bad IDX magic number 0x{magic:08X} (expected 0x00000801 for labels, "
            f"0x00000803 for images, or 0x0000TTDD with a known type code TT); {fix}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ConfigError(f"{source}: truncated IDX header ({len(data)} of {header} bytes); {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[code])
    count = math.prod(dims)
    expected, got = count * dtype.itemsize, len(data) - header
    if got != expected:
        what = "truncated IDX file" if got < expected else "IDX file has trailing bytes"
        raise ConfigError(
            f"{source}: {what}: the header declares shape {dims} ({expected} data bytes) "
            f"but {got} are present; {fix}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed (detected from its content, not its name)."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"IDX file {path} does not exist; check the path")
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if not gzipped:
        return parse_idx(path.read_bytes(), str(path))
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise ConfigError(
            f"{path}: truncated or corrupt gzip file ({exc}); delete it and download it again"
        ) from None
    return parse_idx(data, str(path))


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``)."""
    arr = np.asarray(array)
    code = _CODES.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ConfigError(
            f"IDX cannot store dtype {arr.dtype}; use one of uint8, int8, int16, int32, "
            "float32, float64"
        )
    if not 1 <= arr.ndim <= 255:
        raise ConfigError(f"IDX needs an array with 1 to 255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(np.dtype(_DTYPES[code]), copy=False).tobytes(order="C")
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(payload)
    return path


def find_idx_file(directory: str | os.PathLike[str], name: str) -> Path | None:
    """The file for canonical ``name`` in ``directory``: plain, dotted variant, or ``.gz``."""
    directory = Path(directory)
    dotted = name.replace("-idx", ".idx", 1)
    for stem in dict.fromkeys((name, dotted)):
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _missing(directory: Path) -> list[str]:
    return [f"{n}[.gz]" for n in IDX_FILES.values() if find_idx_file(directory, n) is None]


def _images(arr: np.ndarray, source: Path) -> np.ndarray:
    """IDX images ``(N, H, W)`` → float32 ``(N, 1, H, W)``; uint8 scaled to [0, 1]."""
    if arr.ndim < 2:
        raise ConfigError(f"{source}: expected images of shape (N, ...), got {arr.shape}")
    x = arr.astype(np.float32)  # always a fresh writable copy, standardised in place later
    if arr.dtype == np.uint8:
        x /= np.float32(255.0)
    return x[:, None] if x.ndim == 3 else x


def _read_pair(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_path = find_idx_file(directory, IDX_FILES[f"{split}_images"])
    lbl_path = find_idx_file(directory, IDX_FILES[f"{split}_labels"])
    assert img_path is not None and lbl_path is not None  # guaranteed by locate()
    x = _images(read_idx(img_path), img_path)
    y = read_idx(lbl_path)
    if len(x) != len(y):
        raise ConfigError(
            f"{directory}: {img_path.name} holds {len(x)} images but {lbl_path.name} holds "
            f"{len(y)} labels; the files belong to different datasets or one is damaged"
        )
    return x, y.astype(np.int64)


def _load_idx_dataset(
    name: str,
    root: Path | None,
    *,
    seed: int,
    val_size: int | float | None,
    normalize: bool,
    default_val: int | float,
    num_classes: int | None,
    stats: tuple[float, float] | None = None,
) -> DataBundle:
    directory = locate(
        name,
        root,
        _missing,
        expected=[f"{n}[.gz]" for n in IDX_FILES.values()],
        source=_SOURCES[name],
    )
    x_pool, y_pool = _read_pair(directory, "train")
    x_test, y_test = _read_pair(directory, "test")
    if x_pool.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            f"{directory}: training images are {x_pool.shape[1:]} but test images are "
            f"{x_test.shape[1:]}; both splits must hold images of one shape"
        )
    classes = check_labels(y_pool, num_classes, f"{name} training labels")
    classes = max(classes, check_labels(y_test, num_classes, f"{name} test labels"))
    if normalize:
        # Stats of the full official training split, so they do not depend on the seed.
        standardize(x_pool, x_test, stats=stats)
    x_train, y_train, x_val, y_val = carve_val(x_pool, y_pool, val_size, default_val, seed)
    return make_bundle(name, (x_train, y_train), (x_val, y_val), (x_test, y_test), classes)


def _register_idx_family(name: str, summary: str, stats: tuple[float, float] | None = None) -> None:
    """Register one of the MNIST-format datasets: IDX files, 28×28, 10 classes, 5000 val."""

    def loader(
        root: Path | None, *, seed: int, val_size: int | float | None, normalize: bool
    ) -> DataBundle:
        return _load_idx_dataset(
            name,
            root,
            seed=seed,
            val_size=val_size,
            normalize=normalize,
            default_val=_MNIST_VAL,
            num_classes=10,
            stats=stats,
        )

    loader.__qualname__ = loader.__name__ = f"_load_{name.replace('-', '_')}"
    register_dataset(name, summary=summary)(loader)


_register_idx_family(
    "mnist",
    "MNIST handwritten digits (IDX files), 28×28, 10 classes; 5000 validation",
    _MNIST_STATS,
)
_register_idx_family(
    "fashion-mnist", "Fashion-MNIST clothing images (IDX files), 28×28, 10 classes; 5000 validation"
)
_register_idx_family(
    "kmnist", "Kuzushiji-MNIST cursive Japanese (IDX files), 28×28, 10 classes; 5000 validation"
)


@register_dataset("idx", root="required")
def _load_idx(
    root: Path | None,
    *,
    seed: int,
    val_size: int | float | None,
    normalize: bool,
    num_classes: int | None = None,
) -> DataBundle:
    """Any dataset in MNIST's four-file IDX layout at ``root``; 10 % validation by default."""
    check_num_classes(num_classes)
    return _load_idx_dataset(
        "idx",
        root,
        seed=seed,
        val_size=val_size,
        normalize=normalize,
        default_val=0.1,
        num_classes=num_classes,
    )
