"""Transformers: load a sentence encoder, evaluate it on STS-B / SST-2, compress it.

Techniques: attention-head pruning (Michel et al. 2019), layer dropping, embedding
distillation into a shallower student, int8 through onnxruntime or torchao, ONNX export.
Everything here imports ``transformers`` lazily (extra ``nlp``).
"""

from __future__ import annotations

from dwindle.nlp.distill import EmbeddingDistill, distill_embeddings_, make_student
from dwindle.nlp.encoder import MINILM, SentenceEncoder, load_encoder, minilm_path, tokenize
from dwindle.nlp.evaluate import encode, spearman, sst2_accuracy, stsb_spearman
from dwindle.nlp.export import check_text_onnx, export_text_onnx, onnx_cosine
from dwindle.nlp.heads import (
    count_heads,
    head_gates,
    head_importance,
    heads_to_prune,
    prune_heads_,
    sts_loss,
)
from dwindle.nlp.layers import drop_layers_, keep_pattern, layer_importance, most_important_layers
from dwindle.nlp.quantize import OrtTextModule, TextInt8, quantize_text
from dwindle.nlp.text_data import (
    StsPair,
    load_sst2,
    load_stsb,
    read_sst2,
    read_stsb,
    transfer_sentences,
)

__all__ = [
    "MINILM",
    "EmbeddingDistill",
    "OrtTextModule",
    "SentenceEncoder",
    "StsPair",
    "TextInt8",
    "check_text_onnx",
    "count_heads",
    "distill_embeddings_",
    "drop_layers_",
    "encode",
    "export_text_onnx",
    "head_gates",
    "head_importance",
    "heads_to_prune",
    "keep_pattern",
    "layer_importance",
    "load_encoder",
    "load_sst2",
    "load_stsb",
    "make_student",
    "minilm_path",
    "most_important_layers",
    "onnx_cosine",
    "prune_heads_",
    "quantize_text",
    "read_sst2",
    "read_stsb",
    "spearman",
    "sst2_accuracy",
    "sts_loss",
    "stsb_spearman",
    "tokenize",
    "transfer_sentences",
]
