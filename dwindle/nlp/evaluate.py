"""Task metrics of sentence embeddings: STS-B Spearman (MTEB convention) and SST-2 accuracy.

STS-B: Spearman correlation ×100 between the cosine similarity of the two sentences'
embeddings and the gold scores (as MTEB and sentence-transformers' evaluator report it).
SST-2: accuracy of a logistic-regression head trained on frozen embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode
from dwindle.nlp.encoder import check_seq_length, tokenize
from dwindle.nlp.text_data import StsPair

__all__ = ["encode", "spearman", "sst2_accuracy", "stsb_spearman"]


def _tokenizer(model: nn.Module) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ConfigError(
            f"{type(model).__name__} carries no tokenizer; load text models with "
            "dwindle.nlp.load_encoder (compressed copies keep its tokenizer)"
        )
    return tok


def encode(
    model: nn.Module,
    sentences: Sequence[str],
    *,
    batch_size: int = 64,
    pad_to: int | None = None,
) -> torch.Tensor:
    """Embeddings ``(len(sentences), H)``; batches of similar length, padded to the longest
    (or to ``pad_to`` tokens for a model with a fixed sequence length)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
    check_seq_length(model, pad_to)
    tok = _tokenizer(model)
    max_len = int(getattr(model, "max_seq_length", 512))
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(sentences)
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids = tokenize(tok, [sentences[i] for i in idx], max_length=max_len, pad_to=pad_to)
            emb = model(ids).float()
            for row, i in enumerate(idx):
                out[i] = emb[row]
    return torch.stack(out) if out else torch.empty(0, 0)


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation ×100 (ties get average ranks, as scipy)."""
    from scipy.stats import spearmanr

    return float(spearmanr(torch.as_tensor(a).tolist(), torch.as_tensor(b).tolist())[0] * 100)


def stsb_spearman(
    model: nn.Module,
    pairs: Sequence[StsPair],
    *,
    batch_size: int = 64,
    pad_to: int | None = None,
) -> dict[str, Any]:
    """``{"spearman": ×100, "n_pairs": N}``: cosine of embeddings vs gold scores."""
    if len(pairs) < 2:
        raise ConfigError(f"STS-B evaluation needs at least 2 pairs, got {len(pairs)}")
    sentences = sorted({s for p in pairs for s in (p.sentence1, p.sentence2)})
    emb = encode(model, sentences, batch_size=batch_size, pad_to=pad_to)
    index = {s: i for i, s in enumerate(sentences)}
    e1 = emb[[index[p.sentence1] for p in pairs]]
    e2 = emb[[index[p.sentence2] for p in pairs]]
    cos = F.cosine_similarity(e1, e2, dim=-1)
    return {"spearman": spearman(cos, [p.score for p in pairs]), "n_pairs": len(pairs)}


def sst2_accuracy(
    model: nn.Module,
    train: Sequence[tuple[str, int]],
    test: Sequence[tuple[str, int]],
    *,
    l2: float = 1e-3,
    batch_size: int = 64,
    pad_to: int | None = None,
) -> dict[str, Any]:
    """Accuracy of a logistic-regression head (L-BFGS, L2 ``l2``) on frozen embeddings.

    Returns ``{"sst2_accuracy": 0-1, "n_test": N}``; the encoder is not changed.
    """
    if not train or not test:
        raise ConfigError("SST-2 evaluation needs non-empty train and test rows")
    x_tr = encode(model, [s for s, _ in train], batch_size=batch_size, pad_to=pad_to)
    x_te = encode(model, [s for s, _ in test], batch_size=batch_size, pad_to=pad_to)
    y_tr = torch.tensor([y for _, y in train], dtype=torch.float32)
    y_te = torch.tensor([y for _, y in test])
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    head = nn.Linear(x_tr.shape[1], 1)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = head(x_tr).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(logits, y_tr) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (head(x_te).squeeze(1) > 0).long()
    return {"sst2_accuracy": float((pred == y_te).float().mean()), "n_test": len(test)}
