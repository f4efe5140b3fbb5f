"""Attention-head pruning (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

Importance of head h is ``E_x |dL/d xi_h|``, the gradient of the task loss with respect to a
gate ``xi_h`` (= 1) multiplying that head's output, accumulated over a data subset and
normalised per layer (their section 4.1). Heads are removed physically: the rows of the
query/key/value projections and the columns of the output projection that belong to a head are
sliced away, so the model gets smaller and faster, not just masked. ``prune_heads_iterative_``
removes heads in steps, re-scoring the smaller model each time (their section 5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dwindle.errors import ConfigError
from dwindle.metrics._model import eval_mode
from dwindle.nlp.encoder import encoder_layers
from dwindle.nlp.text_data import StsPair

__all__ = [
    "attention_parts",
    "count_heads",
    "head_gates",
    "head_importance",
    "heads_to_prune",
    "prune_heads_",
    "sts_loss",
]


def attention_parts(layer: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(self_attention, output_projection)`` of a BERT-style block."""
    attn = getattr(getattr(layer, "attention", None), "self", None)
    out = getattr(getattr(getattr(layer, "attention", None), "output", None), "dense", None)
    if attn is None or not isinstance(out, nn.Linear) or not hasattr(attn, "query"):
        raise ConfigError(
            f"{type(layer).__name__} is not a BERT-style block (attention.self.query/key/value "
            "and attention.output.dense); head pruning supports BERT-family encoders"
        )
    return attn, out


def count_heads(model: nn.Module) -> list[int]:
    """Number of attention heads in each layer."""
    return [int(attention_parts(layer)[0].num_attention_heads) for layer in encoder_layers(model)]


@contextlib.contextmanager
def head_gates(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """One gate tensor (ones, requires grad) per layer multiplying each head's output."""
    gates: list[torch.Tensor] = []
    handles = []
    for layer in encoder_layers(model):
        attn, out = attention_parts(layer)
        gate = torch.ones(int(attn.num_attention_heads), requires_grad=True)
        size = int(attn.attention_head_size)

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], gate=gate, size=size):
            x = args[0]
            shaped = x.view(*x.shape[:-1], -1, size) * gate.to(x.dtype)[:, None]
            return (shaped.view(x.shape), *args[1:])

        gates.append(gate)
        handles.append(out.register_forward_pre_hook(hook))
    try:
        yield gates
    finally:
        for h in handles:
            h.remove()


def sts_loss(model: nn.Module, batch: Sequence[StsPair]) -> torch.Tensor:
    """The STS task loss: MSE between cos(u, v) and the gold score / 5 (CosineSimilarityLoss)."""
    ids1 = model.tokenize([p.sentence1 for p in batch])
    ids2 = model.tokenize([p.sentence2 for p in batch])
    cos = F.cosine_similarity(model(ids1), model(ids2), dim=-1)
    gold = torch.tensor([p.score / 5.0 for p in batch], dtype=cos.dtype)
    return F.mse_loss(cos, gold)


def head_importance(
    model: nn.Module,
    batches: Iterable[Sequence[StsPair]],
    *,
    loss_fn: Callable[[nn.Module, Sequence[StsPair]], torch.Tensor] = sts_loss,
    normalize_layers: bool = True,
) -> list[torch.Tensor]:
    """Per-layer tensors of head importance ``sum_batches |dL/dgate|`` (Michel et al. 2019).

    With ``normalize_layers`` each layer's scores are divided by their L2 norm, which Michel et
    al. found makes a global ranking across layers work better. The model is not changed.
    """
    scores: list[torch.Tensor] | None = None
    with eval_mode(model), head_gates(model) as gates:  # eval: no dropout noise in the scores
        for batch in batches:
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, gates)
            step = [g.detach().abs() for g in grads]
            scores = step if scores is None else [s + g for s, g in zip(scores, step, strict=True)]
    if scores is None:
        raise ConfigError("head_importance needs at least one batch of data")
    if normalize_layers:
        scores = [s / s.norm().clamp_min(1e-20) for s in scores]
    return scores


def heads_to_prune(
    importance: Sequence[torch.Tensor], count: int, *, min_per_layer: int = 1
) -> dict[int, list[int]]:
    """The ``count`` least important heads overall, keeping ``min_per_layer`` in every layer."""
    total = sum(len(s) for s in importance)
    removable = sum(max(0, len(s) - min_per_layer) for s in importance)
    if count > removable:
        raise ConfigError(
            f"cannot prune {count} heads: the model has {total} heads in {len(importance)} "
            f"layers and at least {min_per_layer} must stay in each, so at most {removable} "
            "can go (drop whole layers with drop_layers_ instead)"
        )
    ranked = sorted(
        ((float(v), layer, head) for layer, s in enumerate(importance) for head, v in enumerate(s)),
    )
    left = [len(s) for s in importance]
    chosen: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if sum(len(v) for v in chosen.values()) == count:
            break
        if left[layer] > min_per_layer:
            chosen.setdefault(layer, []).append(head)
            left[layer] -= 1
    return {k: sorted(v) for k, v in sorted(chosen.items())}


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=linear.bias is not None, dtype=weight.dtype
    )
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        bias = linear.bias.detach()
        new.bias.data.copy_(bias.index_select(0, index) if dim == 0 else bias)
    return new


def prune_heads_(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> nn.Module:
    """Remove ``{layer: [head, ...]}`` physically (indices as the model is now); in place.

    Sliced away: the heads' rows of query/key/value and columns of the output projection; the
    layer's head count is updated. Every layer must keep at least one head.
    """
    layers = encoder_layers(model)
    for layer_idx, remove in heads.items():
        if not 0 <= int(layer_idx) < len(layers):
            raise ConfigError(
                f"layer {layer_idx} does not exist; the model has layers 0..{len(layers) - 1}"
            )
        attn, out = attention_parts(layers[int(layer_idx)])
        n, size = int(attn.num_attention_heads), int(attn.attention_head_size)
        drop = sorted({int(h) for h in remove})
        bad = [h for h in drop if not 0 <= h < n]
        if bad:
            raise ConfigError(f"layer {layer_idx} has heads 0..{n - 1}; cannot prune head(s) {bad}")
        if len(drop) >= n:
            raise ConfigError(
                f"pruning all {n} heads of layer {layer_idx} would leave it without attention; "
                "keep at least one head, or drop the whole layer with drop_layers_"
            )
        if not drop:
            continue
        keep = [h for h in range(n) if h not in drop]
        index = torch.tensor([h * size + i for h in keep for i in range(size)])
        for name in ("query", "key", "value"):
            setattr(attn, name, _slice_linear(getattr(attn, name), index, 0))
        attn_out = layers[int(layer_idx)].attention.output
        attn_out.dense = _slice_linear(out, index, 1)
        attn.num_attention_heads = len(keep)
        attn.all_head_size = len(keep) * size
    return model
