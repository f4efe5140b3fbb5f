"""Embedding distillation: a student encoder learns to reproduce a teacher's sentence embeddings.

The student starts as a copy of the teacher with a subset of its blocks (``make_student``), so
it begins close (Sanh et al. 2019 initialise DistilBERT the same way), then minimises MSE (or
1 − cosine) to the teacher's embeddings over a transfer set of unlabelled sentences (Reimers &
Gurevych 2020 train multilingual students this way). The teacher's embeddings are computed
once and cached; batches group sentences of similar length so little time goes into padding.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dwindle.config import Config
from dwindle.errors import ConfigError
from dwindle.nlp.encoder import encoder_layers
from dwindle.nlp.evaluate import encode
from dwindle.nlp.layers import drop_layers_, keep_pattern

__all__ = ["EmbeddingDistill", "distill_embeddings_", "make_student"]


class EmbeddingDistill(Config):
    """How a student learns the teacher's embeddings (also the recovery after pruning).

    ``loss``: "mse" on the embeddings or "cosine" (1 − cos). ``sentences``: cap on the transfer
    set size (None: all). ``warmup``: fraction of steps with a linearly rising learning rate,
    then linear decay to 0. ``log_every``: print the running loss every N steps (0: never).
    """

    epochs: float = Field(1.0, gt=0, le=100)
    lr: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(64, ge=1, le=4096)
    loss: Literal["mse", "cosine"] = "mse"
    max_length: int = Field(128, ge=8, le=4096)
    sentences: int | None = Field(None, ge=1)
    warmup: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0
    log_every: int = Field(0, ge=0)


def make_student(teacher: nn.Module, layers: int | Sequence[int]) -> nn.Module:
    """A copy of ``teacher`` keeping ``layers`` blocks (a count: spread evenly) or these indices."""
    total = len(encoder_layers(teacher))
    keep = keep_pattern(total, layers) if isinstance(layers, int) else list(layers)
    return drop_layers_(copy.deepcopy(teacher), keep)


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32
    out: list[list[int]] = []
    for start in range(0, len(order), chunk):
        block = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        out += [block[i : i + batch_size] for i in range(0, len(block), batch_size)]
    rng.shuffle(out)
    return out


def distill_embeddings_(
    student: nn.Module,
    teacher: nn.Module,
    sentences: Sequence[str],
    config: EmbeddingDistill | None = None,
) -> dict[str, Any]:
    """Train ``student`` (in place) to match ``teacher``'s embeddings of ``sentences``.

    Returns ``{"steps", "loss_first", "loss_last", "seconds", "sentences"}``. The teacher is
    only run once, in eval mode, to cache its embeddings.
    """
    cfg = config or EmbeddingDistill()
    sentences = list(sentences)[: cfg.sentences]
    if len(sentences) < 2:
        raise ConfigError(
            f"distillation needs a transfer set of >= 2 sentences, got {len(sentences)}"
        )
    tok = getattr(student, "tokenizer", None)
    if tok is None:
        raise ConfigError("the student carries no tokenizer; build it with make_student(teacher)")
    start_time = time.perf_counter()
    targets = encode(teacher, sentences, batch_size=128)
    lengths = [len(s) for s in sentences]
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    per_epoch = math.ceil(len(sentences) / cfg.batch_size)
    total = max(1, round(per_epoch * cfg.epochs))
    warm = int(total * cfg.warmup)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(s: int) -> float:
        return (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / (total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    max_len = min(cfg.max_length, int(getattr(student, "max_seq_length", cfg.max_length)))
    losses: list[float] = []
    student.train()
    step = 0
    while step < total:
        for idx in _batches(lengths, cfg.batch_size, rng):
            if step >= total:
                break
            ids = tok(
                [sentences[i] for i in idx],
                truncation=True,
                max_length=max_len,
                padding="longest",
                return_tensors="pt",
                return_token_type_ids=False,
                return_attention_mask=False,
            )["input_ids"]
            out = student(ids)
            want = targets[idx]
            if cfg.loss == "mse":
                loss = F.mse_loss(out, want)
            else:
                loss = (1 - F.cosine_similarity(out, want, dim=-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if cfg.log_every and step % cfg.log_every == 0:
                recent = sum(losses[-cfg.log_every :]) / cfg.log_every
                msg = f"  distill step {step}/{total} loss {recent:.3g}"
                print(msg, file=sys.stderr, flush=True)
    student.eval()
    head = losses[: max(1, len(losses) // 20)]
    tail = losses[-max(1, len(losses) // 20) :]
    return {
        "steps": total,
        "loss_first": sum(head) / len(head),
        "loss_last": sum(tail) / len(tail),
        "seconds": time.perf_counter() - start_time,
        "sentences": len(sentences),
    }
