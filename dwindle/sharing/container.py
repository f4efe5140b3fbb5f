"""The ``deepc`` file: a model's clustered, pruned weights Huffman-coded, decodable bit-exactly.

Layout (little-endian)::

    "DWDC" | version u8 | 3 zero bytes | payload length u64 | CRC32 of payload u32
    payload = manifest length u32 | zlib(JSON manifest) | blob

Per clustered layer the blob holds its fp32 codebook and the Huffman-coded cluster indices;
where a ``weight_mask`` (pruning) exists only the kept positions are stored, as differences
from the previous kept position in ``index_bits`` bits, with a filler entry whenever a gap
does not fit (Han et al. 2016, section 2 and Figure 3: 8 bits for conv, 5 for fc; ``"auto"``
picks each layer's width by the bytes it gives, since after Huffman coding the best width
depends on the layer's density). Both the
indices and the differences are Huffman-coded (section 4). A pruned layer that was not
clustered stores its kept values raw with the same coded positions; everything else (biases,
batch-norm statistics) is stored raw. Tied tensors are stored once. The CRC and lengths make
a corrupted or truncated file fail with :class:`CheckpointError`, never load a wrong model.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from dwindle.errors import CheckpointError, ConfigError
from dwindle.export import register_format
from dwindle.sharing.clustering import ClusteredLayer
from dwindle.sharing.huffman import code_lengths, huffman_decode, huffman_encode

__all__ = ["DEFAULT_INDEX_BITS", "FORMAT", "decode_state", "encode_model", "load_deepc"]

FORMAT = "deepc"
MAGIC = b"DWDC"
VERSION = 1
_HEADER = struct.Struct("<4sB3xQI")
DEFAULT_INDEX_BITS: dict[str, int] = {"conv": 8, "linear": 5}
AUTO = "auto"
AUTO_INDEX_BITS = range(2, 13)  # widths "auto" tries (wider: alphabets of 8 192+ code lengths)
IndexBits = int | Literal["auto"]  # a width or AUTO


def _raw(t: Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _from_raw(data: bytes, dtype: str, shape: list[int]) -> Tensor:
    if not data:  # e.g. the kept values of a fully pruned layer
        return torch.zeros(0, dtype=getattr(torch, dtype)).reshape(shape)
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape).clone()


class _Writer:
    def __init__(self) -> None:
        self.blob = bytearray()

    def put(self, data: bytes) -> list[int]:
        self.blob += data
        return [len(self.blob) - len(data), len(data)]

    def stream(self, symbols: np.ndarray, alphabet: int) -> dict[str, Any]:
        lengths = code_lengths(np.bincount(symbols, minlength=alphabet))
        data, nbits = huffman_encode(symbols, lengths)
        return {"L": lengths.tolist(), "at": self.put(data), "nb": nbits, "n": len(symbols)}


def _gaps(positions: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative positions (gap − 1, fits ``bits``) and which entries are fillers: a gap longer
    than 2^bits is bridged by filler entries, each at the furthest reachable position."""
    span = 1 << bits
    g = np.diff(positions.astype(np.int64), prepend=-1)
    fills = (g - 1) // span  # filler entries before each kept position
    gaps = np.full(len(g) + int(fills.sum()), span - 1, dtype=np.int64)
    filler = np.ones(len(gaps), dtype=bool)
    kept = np.cumsum(fills + 1) - 1  # entry index of each kept position
    gaps[kept] = g - fills * span - 1
    filler[kept] = False
    return gaps, filler


def _positions(gaps: np.ndarray, filler: np.ndarray) -> np.ndarray:
    return (np.cumsum(gaps + 1) - 1)[~filler]


def _kind_bits(kind: str, index_bits: Mapping[str, IndexBits]) -> IndexBits:
    return index_bits["linear" if kind == "linear" else "conv"]


def check_index_bits(index_bits: Mapping[str, IndexBits]) -> None:
    """Refuse position widths other than integers 1-16 or ``"auto"``."""
    bad = {
        k: b
        for k, b in index_bits.items()
        if b != AUTO and not (isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 16)
    }
    if bad:
        raise ConfigError(
            f"index_bits values are integers from 1 to 16 or 'auto' (got {bad}); "
            "'auto' picks each layer's width by the bytes it gives"
        )


def _encode_sparse(
    w: _Writer, mask: Tensor, bits: IndexBits, symbols: np.ndarray | None, k: int
) -> dict[str, Any]:
    positions = np.flatnonzero(mask.detach().cpu().numpy().reshape(-1))
    if bits == AUTO:
        bits = min(AUTO_INDEX_BITS, key=lambda b: _sparse_cost(positions, b, symbols, k))
    return _sparse_entry(w, positions, int(bits), symbols, k)


def _sparse_streams(
    positions: np.ndarray, bits: int, symbols: np.ndarray | None, k: int
) -> dict[str, tuple[np.ndarray, int]]:
    """A layer's coded streams at ``bits`` (values and alphabet size) by manifest key: the
    position gaps, then the cluster symbols (symbol ``k`` marks a filler entry) or, unclustered,
    which entries are fillers."""
    gaps, filler = _gaps(positions, bits)
    if symbols is None:
        return {"gap": (gaps, 1 << bits), "fill": (filler.astype(np.int64), 2)}
    full = np.full(len(gaps), k, dtype=np.int64)
    full[~filler] = symbols[positions]
    return {"gap": (gaps, 1 << bits), "sym": (full, k + 1)}


def _sparse_cost(positions: np.ndarray, bits: int, symbols: np.ndarray | None, k: int) -> int:
    """Bytes a layer's coded positions (and symbols) take at ``bits``: the Huffman streams
    exactly (from their histograms) plus their code-length tables as the manifest holds them."""
    total, tables = 0, []
    for values, alphabet in _sparse_streams(positions, bits, symbols, k).values():
        counts = np.bincount(values, minlength=alphabet)
        lengths = code_lengths(counts)
        total += (int((counts * lengths).sum()) + 7) // 8
        tables.append(lengths.tolist())
    return total + len(zlib.compress(json.dumps(tables, separators=(",", ":")).encode()))


def _sparse_entry(
    w: _Writer, positions: np.ndarray, bits: int, symbols: np.ndarray | None, k: int
) -> dict[str, Any]:
    streams = _sparse_streams(positions, bits, symbols, k)
    return {"gb": bits, **{key: w.stream(*stream) for key, stream in streams.items()}}


def encode_model(
    model: nn.Module, index_bits: Mapping[str, IndexBits] | None = None
) -> tuple[bytes, list[dict[str, Any]]]:
    """The ``deepc`` bytes of ``model`` and per-tensor stats (name, kind, count, bytes, and
    ``index_bits`` for pruned layers). ``index_bits`` per ``conv``/``linear``: a width, or
    ``"auto"`` for each layer's width in 2-12 bits that gives it the fewest bytes."""
    bits: dict[str, IndexBits] = {**DEFAULT_INDEX_BITS, **(index_bits or {})}
    check_index_bits(bits)
    state = model.state_dict()
    w, entries, stats, done = _Writer(), [], [], set()
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}

    def stat(name: str, kind: str, count: int, start: int, entry: dict[str, Any]) -> None:
        row = {"name": name, "kind": kind, "count": count, "bytes": len(w.blob) - start}
        if "gb" in entry:
            row["index_bits"] = entry["gb"]
        stats.append(row)

    for prefix, module in model.named_modules():
        pre = prefix + "." if prefix else ""
        if isinstance(module, ClusteredLayer):
            start, k = len(w.blob), module.clusters
            idx = module.indices.detach().cpu().numpy().reshape(-1).astype(np.int64)
            e: dict[str, Any] = {
                "n": prefix,
                "k": "cl",
                "s": list(module.indices.shape),
                "K": k,
                "it": str(module.indices.dtype).removeprefix("torch."),
                "cd": str(module.codebook.dtype).removeprefix("torch."),
                "cb": w.put(_raw(module.codebook)),
            }
            if module.weight_mask is not None:
                e.update(
                    _encode_sparse(w, module.weight_mask, _kind_bits(module.kind, bits), idx, k)
                )
            else:
                e["sym"] = w.stream(idx, k)
            entries.append(e)
            done.update({pre + "codebook", pre + "indices", pre + "weight_mask"})
            stat(prefix, "clustered", int(module.indices.numel()), start, e)
        elif isinstance(module._buffers.get("weight_mask"), Tensor) and isinstance(
            module._parameters.get("weight"), Tensor
        ):
            weight, mask = module.weight.detach().cpu(), module.weight_mask.detach().cpu().bool()
            if mask.shape != weight.shape or bool(
                ((weight[~mask] != 0) | torch.signbit(weight[~mask])).any()
            ):
                continue  # pruned entries not all +0.0: not exactly sparse, stored raw below
            start = len(w.blob)
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
            e = {
                "n": prefix,
                "k": "sp",
                "s": list(weight.shape),
                "d": str(weight.dtype).removeprefix("torch."),
                "v": w.put(_raw(weight[mask])),
            }
            e.update(_encode_sparse(w, mask, _kind_bits(kind, bits), None, 0))
            entries.append(e)
            done.update({pre + "weight", pre + "weight_mask"})
            stat(prefix, "sparse", int(mask.sum()), start, e)
    for name, t in state.items():
        if name in done or not isinstance(t, Tensor):
            continue
        key = (
            t.untyped_storage().data_ptr() if t.numel() else id(t),
            t.storage_offset(),
            tuple(t.shape),
        )
        if key in seen:
            entries.append({"n": name, "k": "alias", "of": seen[key]})
            continue
        seen[key] = name
        start = len(w.blob)
        entries.append(
            {
                "n": name,
                "k": "raw",
                "d": str(t.dtype).removeprefix("torch."),
                "s": list(t.shape),
                "at": w.put(_raw(t)),
            }
        )
        stat(name, "raw", t.numel(), start, entries[-1])
    manifest = zlib.compress(json.dumps({"t": entries}, separators=(",", ":")).encode(), 9)
    payload = struct.pack("<I", len(manifest)) + manifest + bytes(w.blob)
    header = _HEADER.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload))
    return header + payload, stats


# --- decoding ----------------------------------------------------------------------------------


def _check_header(data: bytes, where: str) -> bytes:
    if len(data) < _HEADER.size:
        raise CheckpointError(f"{where} is truncated: {len(data)} bytes, shorter than the header")
    magic, version, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError(f"{where} is not a dwindle deepc file (magic {magic!r})")
    if version != VERSION:
        raise CheckpointError(f"{where} has deepc version {version}; this dwindle reads {VERSION}")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise CheckpointError(
            f"{where} is truncated or padded: the header says {length} payload bytes, "
            f"the file holds {len(payload)}"
        )
    if zlib.crc32(payload) != crc:
        raise CheckpointError(f"{where} is corrupted: CRC32 mismatch; re-export the model")
    return payload


def _read(blob: bytes, at: list[int]) -> bytes:
    start, size = at
    if start < 0 or start + size > len(blob):
        raise CheckpointError("corrupted deepc file: a tensor lies outside the data block")
    return blob[start : start + size]


def _stream(blob: bytes, s: dict[str, Any]) -> np.ndarray:
    return huffman_decode(_read(blob, s["at"]), s["nb"], np.asarray(s["L"]), s["n"])


def _decode_entry(blob: bytes, e: dict[str, Any], out: dict[str, Tensor]) -> None:
    name, shape = e["n"], e["s"]
    pre = name + "." if name else ""
    numel = int(np.prod(shape))
    if e["k"] == "raw":
        out[name] = _from_raw(_read(blob, e["at"]), e["d"], shape)
        return
    if e["k"] == "alias":
        out[name] = out[e["of"]]
        return
    sparse = "gap" in e
    if sparse:
        gaps = _stream(blob, e["gap"])
        syms = _stream(blob, e["sym"]) if "sym" in e else None
        filler = syms == e["K"] if syms is not None else _stream(blob, e["fill"]).astype(bool)
        if len(filler) != len(gaps):
            raise CheckpointError(f"corrupted deepc file: stream lengths differ in {name!r}")
        positions = _positions(gaps, filler)
        if len(positions) and (positions[-1] >= numel or (np.diff(positions) <= 0).any()):
            raise CheckpointError(f"corrupted deepc file: bad sparse positions in {name!r}")
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[torch.from_numpy(positions)] = True
    if e["k"] == "sp":
        values = _from_raw(_read(blob, e["v"]), e["d"], [len(positions)])
        weight = torch.zeros(numel, dtype=values.dtype)
        weight[torch.from_numpy(positions)] = values
        out[pre + "weight"], out[pre + "weight_mask"] = weight.reshape(shape), mask.reshape(shape)
        return
    codebook = _from_raw(_read(blob, e["cb"]), e["cd"], [-1])
    if sparse:
        idx = np.zeros(numel, dtype=np.int64)
        idx[positions] = syms[~filler]
        out[pre + "weight_mask"] = mask.reshape(shape)
    else:
        idx = _stream(blob, e["sym"])
    if len(idx) != numel or (idx >= len(codebook)).any():
        raise CheckpointError(f"corrupted deepc file: bad cluster indices in {name!r}")
    out[pre + "codebook"] = codebook
    out[pre + "indices"] = torch.from_numpy(idx).to(getattr(torch, e["it"])).reshape(shape)
    dense = codebook[torch.from_numpy(idx)].reshape(shape)
    if sparse:
        dense = torch.where(mask.reshape(shape), dense, torch.zeros((), dtype=dense.dtype))
    out[pre + "weight"] = dense  # the effective weight, for loading into a plain model


def decode_state(data: bytes, where: str = "deepc data") -> dict[str, Tensor]:
    """Tensors of a ``deepc`` file by state-dict name; clustered layers also get ``.weight``."""
    payload = _check_header(data, where)
    try:
        (mlen,) = struct.unpack_from("<I", payload)
        manifest = json.loads(zlib.decompress(payload[4 : 4 + mlen]))
        blob = payload[4 + mlen :]
        out: dict[str, Tensor] = {}
        for entry in manifest["t"]:
            _decode_entry(blob, entry, out)
    except CheckpointError:
        raise
    except (struct.error, zlib.error, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{where} is corrupted: {exc}") from None
    return out


def load_deepc(model: nn.Module, path: str | Path) -> None:
    """Load a ``deepc`` file into ``model``: the clustered model it was written from, or the
    plain architecture (clustered layers then load their dense effective weights)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"deepc file {str(p)!r} does not exist; check the path")
    state = decode_state(p.read_bytes(), f"deepc file {str(p)!r}")
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    mismatched = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or mismatched:
        raise CheckpointError(
            f"deepc file {str(p)!r} does not fit {type(model).__name__}: missing "
            f"{missing[:8]}, shape mismatches {mismatched[:8]}; build the same architecture"
        )
    model.load_state_dict({k: state[k] for k in target}, strict=False)


def _save_deepc(model: nn.Module, path: Path) -> None:
    bits = getattr(model, "dwindle_index_bits", None)
    path.write_bytes(encode_model(model, bits)[0])


register_format(FORMAT, _save_deepc, load_deepc, magic=MAGIC)
