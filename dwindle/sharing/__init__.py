"""Parameter sharing and entropy coding: k-means weight sharing with centroid fine-tuning,
HashedNets, cross-layer tying, and Huffman coding into the ``deepc`` file (Deep Compression).

Stages: ``share`` (method kmeans / hash / tie) and ``encode`` (method huffman).

>>> import torch
>>> from dwindle.sharing import Share, share_
>>> model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
>>> _ = share_(model, Share(bits=3))
>>> int(model[0].weight.unique().numel()) <= 8
True
"""

from dwindle.sharing.clustering import CLUSTERABLE_TYPES, ClusteredLayer, cluster_layer, kmeans_1d
from dwindle.sharing.container import (
    DEFAULT_INDEX_BITS,
    FORMAT,
    decode_state,
    encode_model,
    load_deepc,
)
from dwindle.sharing.hashing import HashedLinear, hash_buckets
from dwindle.sharing.huffman import code_lengths, huffman_decode, huffman_encode
from dwindle.sharing.stage import Encode, Share, encode_, share_
from dwindle.sharing.tying import tie_, tie_groups

__all__ = [
    "CLUSTERABLE_TYPES",
    "DEFAULT_INDEX_BITS",
    "FORMAT",
    "ClusteredLayer",
    "Encode",
    "HashedLinear",
    "Share",
    "cluster_layer",
    "code_lengths",
    "decode_state",
    "encode_",
    "encode_model",
    "hash_buckets",
    "huffman_decode",
    "huffman_encode",
    "kmeans_1d",
    "load_deepc",
    "share_",
    "tie_",
    "tie_groups",
]
