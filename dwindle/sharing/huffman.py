"""Canonical Huffman coding of small-alphabet symbol streams (numpy-vectorised encoding).

Deep Compression (Han et al. 2016, section 4) Huffman-codes the cluster indices and the
sparse-index differences, saving 20–30 % more. A canonical code is fully described by its
code lengths, so the container stores one byte per alphabet symbol, not the tree.
"""

from __future__ import annotations

import heapq

import numpy as np

from dwindle.errors import CheckpointError

__all__ = ["code_lengths", "huffman_decode", "huffman_encode"]

MAX_CODE_LENGTH = 24


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur)."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    heap: list[tuple[int, int, list[int]]] = [(int(counts[s]), int(s), [int(s)]) for s in used]
    heapq.heapify(heap)
    depth = np.zeros(len(counts), dtype=np.int64)
    while len(heap) > 1:
        c1, t1, s1 = heapq.heappop(heap)
        c2, t2, s2 = heapq.heappop(heap)
        depth[s1] += 1
        depth[s2] += 1
        heapq.heappush(heap, (c1 + c2, min(t1, t2), s1 + s2))
    if depth.max(initial=0) > MAX_CODE_LENGTH:
        # pathological skew: fall back to a flat code (still prefix-free, never wrong)
        flat = max(1, int(np.ceil(np.log2(len(used)))))
        lengths[used] = flat
        return lengths
    lengths[used] = depth[used]
    return lengths


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: symbols sorted by (length, symbol) get consecutive codes."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for sym in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[sym]) - prev
        prev = int(lengths[sym])
        codes[sym] = code
        code += 1
    return codes


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """``(packed bits, number of bits)`` of ``symbols`` under the canonical code ``lengths``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if len(symbols) == 0:
        return b"", 0
    codes = _canonical_codes(lengths)
    lens = lengths.astype(np.int64)[symbols]
    if (lens == 0).any():
        raise ValueError("a symbol to encode has no code (its count was zero)")
    total = int(lens.sum())
    starts = np.cumsum(lens) - lens
    owner = np.repeat(np.arange(len(symbols)), lens)
    offset = np.arange(total) - starts[owner]
    bits = (codes[symbols][owner] >> (lens[owner] - 1 - offset)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes(), total


def huffman_decode(data: bytes, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Decode ``count`` symbols from ``data`` (``nbits`` valid bits); raises on bad streams."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    max_len = int(lengths.max(initial=0))
    if max_len == 0 or max_len > MAX_CODE_LENGTH or len(data) * 8 < nbits:
        raise CheckpointError("corrupted Huffman stream: bad code table or bit count")
    codes = _canonical_codes(lengths.astype(np.uint8))
    table_sym = np.full(1 << max_len, -1, dtype=np.int64)
    table_len = np.zeros(1 << max_len, dtype=np.int64)
    for sym in np.flatnonzero(lengths):
        shift = max_len - int(lengths[sym])
        lo = int(codes[sym]) << shift
        table_sym[lo : lo + (1 << shift)] = sym
        table_len[lo : lo + (1 << shift)] = lengths[sym]
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:nbits].astype(np.int64)
    padded = np.concatenate([bits, np.zeros(max_len, dtype=np.int64)])
    windows = np.zeros(nbits + 1, dtype=np.int64)  # the max_len bits starting at each position
    for j in range(max_len):
        windows = (windows << 1) | padded[j : j + nbits + 1]
    out = np.empty(count, dtype=np.int64)
    syms, lens = table_sym[windows].tolist(), table_len[windows].tolist()
    pos = 0
    for i in range(count):
        if pos >= nbits or syms[pos] < 0:
            raise CheckpointError(
                f"corrupted Huffman stream: no valid code at bit {pos} of {nbits} "
                f"(symbol {i} of {count})"
            )
        out[i] = syms[pos]
        pos += lens[pos]
    if pos != nbits:
        raise CheckpointError(
            f"corrupted Huffman stream: decoding {count} symbols used {pos} of {nbits} bits"
        )
    return out
