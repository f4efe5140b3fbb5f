"""A really smaller artifact for pruned models: sparse tensors and the ``sparse`` file format.

Masks save nothing by themselves: the weights are still dense. This module stores only the
non-zero entries. In memory: :func:`to_coo` / :func:`to_csr` (torch sparse tensors). On disk:
the relative-index encoding of Han et al. 2016 ("Deep Compression", Section 2): each non-zero
value with the gap to the previous one in ``index_bits`` bits, a zero "filler" entry bridging
gaps longer than 2^bits. A tensor is written so only when that is smaller than dense.

The ``sparse`` format (registered with :func:`dwindle.export.register_format`) is a small
header (JSON, like safetensors) plus raw bytes; :func:`load_sparse` restores the dense
weights bit-exactly into a model of the same architecture, with or without mask buffers.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dwindle.errors import CheckpointError, ConfigError
from dwindle.export import atomic_write, register_format
from dwindle.pruning.masks import MASK_SUFFIX

__all__ = [
    "INDEX_BITS",
    "decode_relative",
    "encode_relative",
    "encoded_bytes",
    "load_sparse",
    "save_sparse",
    "sparse_state",
    "to_coo",
    "to_csr",
]

MAGIC = b"DWSPARS1"
INDEX_BITS = (4, 8, 16)
_INT_VIEW = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        *_INT_VIEW,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def to_coo(weight: Tensor) -> Tensor:
    """The non-zero entries of ``weight`` as a torch COO sparse tensor."""
    return weight.detach().to_sparse_coo()


def to_csr(weight: Tensor) -> Tensor:
    """``weight`` as a CSR sparse matrix of its ``(out, in·k…)`` view."""
    return weight.detach().reshape(weight.shape[0], -1).to_sparse_csr()


def _nonzero_bits(flat: Tensor) -> Tensor:
    """Entries whose bit pattern is not all-zero (so -0.0 and NaN survive a round trip)."""
    view = _INT_VIEW.get(flat.dtype)
    return (flat.view(view) if view is not None else flat) != 0


def encode_relative(weight: Tensor, index_bits: int = 8) -> tuple[Tensor, Tensor]:
    """``(values, gaps)``: non-zeros in order and each one's gap − 1 to the previous position.

    A gap longer than 2^index_bits is bridged by filler entries (value 0, gap 2^bits).
    """
    if index_bits not in INDEX_BITS:
        raise ConfigError(f"index_bits must be one of {INDEX_BITS} (got {index_bits})")
    flat = weight.detach().flatten()
    pos = torch.nonzero(_nonzero_bits(flat)).flatten()
    gaps = torch.diff(pos, prepend=torch.tensor([-1]))
    span = 1 << index_bits
    fillers = (gaps - 1) // span
    # Each real entry is preceded by its fillers; fillers advance by the full span.
    counts = fillers + 1
    codes = torch.full((int(counts.sum()),), span - 1, dtype=torch.int64)
    values = torch.zeros(codes.numel(), dtype=flat.dtype)
    last = torch.cumsum(counts, 0) - 1
    codes[last] = gaps - 1 - fillers * span
    values[last] = flat[pos]
    return values, codes


def decode_relative(values: Tensor, codes: Tensor, numel: int) -> Tensor:
    """Dense flat tensor of ``numel`` entries from :func:`encode_relative`'s output."""
    out = torch.zeros(numel, dtype=values.dtype)
    if codes.numel():
        pos = torch.cumsum(codes.to(torch.int64) + 1, 0) - 1
        out[pos] = values
    return out


def _pack_codes(codes: Tensor, index_bits: int) -> bytes:
    arr = codes.numpy()
    if index_bits == 4:
        arr = np.pad(arr, (0, arr.size % 2))
        return ((arr[0::2] << 4) | arr[1::2]).astype(np.uint8).tobytes()
    return arr.astype(np.uint8 if index_bits == 8 else "<u2").tobytes()


def _unpack_codes(raw: bytes, index_bits: int, n: int) -> Tensor:
    if index_bits == 4:
        packed = np.frombuffer(raw, dtype=np.uint8)
        arr = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:n]
    else:
        arr = np.frombuffer(raw, dtype=np.uint8 if index_bits == 8 else "<u2")
    return torch.from_numpy(arr.astype(np.int64))


def _raw(t: Tensor) -> bytes:
    # flattened first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def encoded_bytes(weight: Tensor, encoding: str, index_bits: int = 8) -> int:
    """Bytes of ``weight`` stored as ``dense``, ``coo``/``csr`` (int32 indices) or ``relative``."""
    nnz = int(_nonzero_bits(weight.detach().flatten()).sum())
    item = weight.element_size()
    if encoding == "dense":
        return weight.numel() * item
    if encoding == "coo":
        return nnz * (item + 4 * max(1, weight.dim()))
    if encoding == "csr":
        return nnz * (item + 4) + (weight.shape[0] + 1) * 4
    if encoding == "relative":
        values, codes = encode_relative(weight, index_bits)
        return values.numel() * item + len(_pack_codes(codes, index_bits))
    raise ConfigError(f"unknown encoding {encoding!r}; use dense, coo, csr or relative")


def sparse_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state with masks applied and the mask buffers left out."""
    state = model.state_dict()
    out = {}
    for key, value in state.items():
        if key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)] in state:
            continue
        mask = state.get(key + MASK_SUFFIX)
        out[key] = value.masked_fill(~mask.bool(), 0) if mask is not None else value
    return out


def save_sparse(model: nn.Module, path: str | os.PathLike[str], index_bits: int = 8) -> Path:
    """Write ``model`` in the ``sparse`` format (each tensor dense or relative-indexed)."""
    return atomic_write(path, lambda tmp: _write_sparse(model, tmp, index_bits))


def _write_sparse(model: nn.Module, path: Path, index_bits: int = 8) -> None:
    header: dict[str, Any] = {
        "__metadata__": {"format": "dwindle-sparse", "index_bits": index_bits}
    }
    blobs: list[bytes] = []
    offset = 0
    for key, tensor in sparse_state(model).items():
        t = tensor.detach().cpu().contiguous()
        entry: dict[str, Any] = {
            "dtype": str(t.dtype).removeprefix("torch."),
            "shape": list(t.shape),
        }
        dense = _raw(t)
        chunk = dense
        if t.dtype in _INT_VIEW and t.numel():
            values, codes = encode_relative(t, index_bits)
            packed = _raw(values) + _pack_codes(codes, index_bits)
            if len(packed) < len(dense):
                chunk = packed
                entry.update(encoding="relative", entries=codes.numel(), values=values.numel())
        entry.setdefault("encoding", "dense")
        entry.update(offset=offset, nbytes=len(chunk))
        header[key] = entry
        blobs.append(chunk)
        offset += len(chunk)
    head = json.dumps(header, separators=(",", ":")).encode()
    with Path(path).open("wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(head)) + head)
        for blob in blobs:
            f.write(blob)


def _read(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    if raw[:8] != MAGIC:
        raise CheckpointError(f"{str(path)!r} is not a dwindle sparse file (bad magic bytes)")
    (n,) = struct.unpack("<Q", raw[8:16])
    return json.loads(raw[16 : 16 + n]), raw[16 + n :]


def _decode(entry: dict[str, Any], blob: bytes, index_bits: int) -> Tensor:
    dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
    chunk = blob[entry["offset"] : entry["offset"] + entry["nbytes"]]
    numel = int(np.prod(shape)) if shape else 1
    if entry["encoding"] == "dense":
        flat = torch.frombuffer(bytearray(chunk), dtype=torch.uint8) if chunk else None
        t = flat.view(dtype) if flat is not None else torch.zeros(numel, dtype=dtype)
        return t.reshape(shape).clone()
    n_values = entry["values"]
    item = torch.empty((), dtype=dtype).element_size()
    raw = bytearray(chunk[: n_values * item])
    # an all-zero tensor keeps no values (frombuffer refuses an empty buffer)
    values = (
        torch.frombuffer(raw, dtype=torch.uint8).view(dtype) if raw else torch.empty(0, dtype=dtype)
    )
    codes = _unpack_codes(chunk[n_values * item :], index_bits, entry["entries"])
    return decode_relative(values, codes, numel).reshape(shape)


def load_sparse(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a ``sparse`` file into ``model`` (same architecture); returns it.

    Mask buffers the model has but the file lacks are rebuilt from the non-zero pattern.
    """
    path = Path(path)
    header, blob = _read(path)
    index_bits = header.pop("__metadata__")["index_bits"]
    state = {key: _decode(entry, blob, index_bits) for key, entry in header.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(MASK_SUFFIX)]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise CheckpointError(
            f"{str(path)!r} does not fit {type(model).__name__}: missing {missing[:8]}, "
            f"unexpected {extra[:8]}; build the same architecture before loading"
        )
    for key in own:
        base = key[: -len(MASK_SUFFIX)]
        if key.endswith(MASK_SUFFIX) and key not in state and base in state:
            state[key] = _nonzero_bits(state[base].flatten()).reshape(state[base].shape)
    model.load_state_dict(state)
    return model


register_format("sparse", _write_sparse, load_sparse, magic=MAGIC)
