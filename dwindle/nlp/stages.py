"""Recipe stages for text encoders and the STS-B data a recipe measures them on.

Stages: ``prune_heads`` (Michel et al. 2019, iterative, optional distillation recovery),
``drop_layers`` (depth pruning by a fixed pattern or importance, optional distillation) and
``quantize_text`` (int8 through onnxruntime, torchao or inductor). Their data (importance pairs, the
transfer set, calibration sentences) is STS-B train + SST-2 train from the recipe's data root.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from dwindle.config import Config, StageContext, register_technique
from dwindle.data.bundle import DataBundle
from dwindle.errors import ConfigError
from dwindle.nlp.distill import EmbeddingDistill, distill_embeddings_
from dwindle.nlp.evaluate import stsb_spearman
from dwindle.nlp.heads import count_heads, head_importance, heads_to_prune, prune_heads_
from dwindle.nlp.layers import drop_layers_, keep_pattern, layer_importance, most_important_layers
from dwindle.nlp.quantize import TextInt8, quantize_text
from dwindle.nlp.text_data import StsPair, load_sst2, load_stsb, transfer_sentences

__all__ = ["HeadPruning", "LayerDrop", "StsBundle", "sts_bundle"]


class StsBundle(DataBundle):
    """STS-B as a DataBundle: ``x_*`` are first-sentence token ids padded to ``seq_len`` (what
    latency and FLOPs run on), ``task_metrics`` is Spearman on the split's pairs."""

    pairs: dict[str, list[StsPair]]
    text_root: str | None

    def task_metrics(self, model: nn.Module, split: str) -> dict[str, Any]:
        return stsb_spearman(model, self.pairs[split])


def sts_bundle(
    model: nn.Module, root: str | None = None, *, seq_len: int = 128, limit: int | None = None
) -> StsBundle:
    """STS-B train (as train) and dev (as val and test; the test labels are not public here)."""
    train, dev = load_stsb("train", root)[:limit], load_stsb("dev", root)

    def ids(pairs: list[StsPair]) -> torch.Tensor:
        return model.tokenize([p.sentence1 for p in pairs], pad_to=seq_len)

    def scores(pairs: list[StsPair]) -> torch.Tensor:
        return torch.tensor([p.score for p in pairs])

    x_dev = ids(dev[:64])  # latency/FLOPs inputs; Spearman reads the pairs themselves
    bundle = StsBundle(
        "stsb",
        ids(train[:64]),
        scores(train[:64]),
        x_dev,
        scores(dev[:64]),
        x_dev,
        scores(dev[:64]),
        num_classes=0,
    )
    bundle.pairs = {"train": train, "val": dev, "test": dev}
    bundle.text_root = root
    return bundle


def _root(context: StageContext) -> str | None:
    return getattr(context.data, "text_root", None)


def _recover(model: nn.Module, teacher: nn.Module, cfg: EmbeddingDistill | None, root) -> None:
    if cfg is not None:
        sentences = transfer_sentences(load_stsb("train", root), load_sst2("train", root))
        distill_embeddings_(model, teacher, sentences, cfg)


class HeadPruning(Config):
    """Remove ``ratio`` of all attention heads (Michel et al. 2019) in ``steps`` re-scored steps.

    Importance comes from ``importance_pairs`` STS-B train pairs; ``recover`` distils the
    pruned model towards the unpruned one's embeddings afterwards.
    """

    ratio: float = Field(0.4, gt=0, lt=1)
    steps: int = Field(1, ge=1, le=100)
    importance_pairs: int = Field(256, ge=1)
    recover: EmbeddingDistill | None = None


@register_technique("prune_heads", HeadPruning, "attention-head pruning (Michel et al. 2019)")
def _prune_heads_stage(model: nn.Module, config: HeadPruning, context: StageContext) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    total = sum(count_heads(model))
    target = -(-round(total * config.ratio * 1000) // 1000)
    pairs = load_stsb("train", _root(context))
    pairs = random.Random(0).sample(pairs, min(config.importance_pairs, len(pairs)))
    batches = [pairs[i : i + 32] for i in range(0, len(pairs), 32)]
    done = 0
    for k in range(config.steps):
        count = round(target * (k + 1) / config.steps) - done
        prune_heads_(model, heads_to_prune(head_importance(model, batches), count))
        done += count
    _recover(model, teacher, config.recover, _root(context))
    context.note(f"prune_heads: {done} of {total} heads removed -> {count_heads(model)}")
    return model.eval()


class LayerDrop(Config):
    """Keep ``layers`` encoder blocks: evenly spread (``method: pattern``), the most important
    by leave-one-out loss (``importance``), or exactly ``keep``; then optional distillation."""

    layers: int | None = Field(None, ge=1)
    keep: tuple[int, ...] | None = None
    method: Literal["pattern", "importance"] = "pattern"
    recover: EmbeddingDistill | None = None


@register_technique("drop_layers", LayerDrop, "depth pruning of a transformer encoder")
def _drop_layers_stage(model: nn.Module, config: LayerDrop, context: StageContext) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    total = len(count_heads(model))
    if config.keep is not None:
        keep = list(config.keep)
    elif config.layers is None:
        raise ConfigError("drop_layers needs 'layers' (how many blocks to keep) or 'keep'")
    elif config.method == "pattern":
        keep = keep_pattern(total, config.layers)
    else:
        pairs = load_stsb("train", _root(context))[:256]
        scores = layer_importance(model, [pairs[i : i + 32] for i in range(0, len(pairs), 32)])
        keep = most_important_layers(scores, config.layers)
    drop_layers_(model, keep)
    _recover(model, teacher, config.recover, _root(context))
    context.note(f"drop_layers: kept blocks {keep} of {total}")
    return model.eval()


@register_technique(
    "quantize_text", TextInt8, "int8 text encoder (onnxruntime / torchao / inductor)"
)
def _quantize_text_stage(model: nn.Module, config: TextInt8, context: StageContext) -> nn.Module:
    calib = None
    if config.mode == "static":
        pairs = load_stsb("train", _root(context))[: config.calibration_samples]
        calib = [p.sentence1 for p in pairs]
    out = quantize_text(model, config, calibration=calib)
    context.note(f"quantize_text: {getattr(out, 'scheme', config.backend)}; inference only")
    return out
