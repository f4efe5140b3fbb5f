"""Neuron pruning of fully connected layers: whole hidden units removed with their connections.

Two criteria:

* ``data_free`` — Srinivas & Babu 2015, "Data-free Parameter Pruning for Deep Neural Networks"
  (BMVC). Two neurons i, j with equal incoming weight sets compute the same activation, so j can
  be removed and its outgoing weights added to i's: a_i ← a_i + a_j. For unequal sets the
  expected error is bounded by the saliency s(i, j) = ⟨a_j²⟩ ‖W_i − W_j‖² (eq. 6); the pair of
  least saliency is merged first, greedily, until the requested number is gone. No data needed.
* ``activation`` — with data, the mean absolute activation each neuron feeds to the next layer
  over calibration batches (the weakest units are removed, in the spirit of Hu et al. 2016's
  "Network Trimming").

Removal is physical (rows of the layer, columns of its consumers) through the same dependency
graph as filter pruning, so the result is a plain, smaller ``nn.Sequential``/``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.pruning.structured import (
    coupled_modules,
    example_input_for,
    remove_channels,
    select_supported,
    trace_channels,
)

__all__ = ["NeuronPruning", "merge_plan", "neuron_activations", "prune_neurons_"]


class NeuronPruning(TargetedConfig):
    """Remove ``ratio`` of the hidden neurons of each targeted ``nn.Linear``.

    ``criterion``: ``data_free`` (Srinivas & Babu 2015 merge, no data) or ``activation``
    (needs data; ``batches`` calibration batches of ``batch_size``). Layers feeding no other
    layer (the classifier) keep their outputs.
    """

    ratio: float = Field(0.5, ge=0, lt=1)
    criterion: Literal["data_free", "activation"] = "data_free"
    batches: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=1)


def merge_plan(
    incoming: torch.Tensor, outgoing: torch.Tensor, n_remove: int
) -> list[tuple[int, int]]:
    """Greedy Srinivas-Babu merges ``[(removed j, survivor i), ...]`` of one layer.

    ``incoming`` is ``(n, fan_in)`` (weights with the bias as a last column), ``outgoing`` is
    ``(fan_out, n)`` (the consumer's weight columns). The saliency of merging j into i is
    ⟨a_j²⟩ ‖W_i − W_j‖²; after each merge a_i ← a_i + a_j, so ⟨a_i²⟩ is updated.
    """
    w = incoming.detach().double()
    a = outgoing.detach().double().clone()
    n = w.shape[0]
    dist = torch.cdist(w, w).pow(2)  # ‖W_i − W_j‖², fixed: incoming sets do not change
    dist.fill_diagonal_(float("inf"))
    alive = torch.ones(n, dtype=torch.bool)
    plan: list[tuple[int, int]] = []
    for _ in range(n_remove):
        sal = dist * a.pow(2).mean(0)[None, :]  # sal[i, j] = ⟨a_j²⟩ ‖W_i − W_j‖²
        sal[~alive, :] = float("inf")
        sal[:, ~alive] = float("inf")
        flat = int(torch.argmin(sal))
        i, j = divmod(flat, n)
        a[:, i] += a[:, j]
        alive[j] = False
        plan.append((j, i))
    return plan


def neuron_activations(
    model: nn.Module, consumers: Sequence[nn.Module], data: Any, config: NeuronPruning
) -> dict[nn.Module, torch.Tensor]:
    """Mean |input| per feature of each consumer layer over ``config.batches`` training batches."""
    sums: dict[nn.Module, torch.Tensor] = {}
    count = {"n": 0}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().flatten(0, -2).abs().double()
        sums[module] = sums.get(module, 0) + x.sum(0)

    handles = [c.register_forward_pre_hook(hook) for c in consumers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, (x, _) in enumerate(data.batches("train", config.batch_size, shuffle=True)):
                if i >= config.batches:
                    break
                model(x)
                count["n"] += len(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {m: s / max(count["n"], 1) for m, s in sums.items()}


def _incoming(layer: nn.Linear) -> torch.Tensor:
    w = layer.weight.detach()
    if layer.bias is None:
        return w
    return torch.cat([w, layer.bias.detach()[:, None]], dim=1)


def prune_neurons_(
    model: nn.Module,
    config: NeuronPruning,
    *,
    example_input: torch.Tensor | None = None,
    data: Any = None,
    notes: list[str] | None = None,
) -> nn.Module:
    """Remove ``config.ratio`` of the neurons of every targeted hidden linear layer, in place."""
    notes = notes if notes is not None else []
    if config.criterion == "activation" and data is None:
        raise ConfigError(
            "criterion 'activation' needs data: pass data=<DataBundle> "
            "(or use criterion 'data_free', which needs none)"
        )
    chosen = select_supported(model, config, (nn.Linear,), "neuron pruning")
    ex = example_input_for(example_input, data, "neuron pruning")
    graph = trace_channels(model, ex, [n for n, _ in chosen])
    chosen_set = {m for _, m in chosen}
    for name, layer in chosen:
        n = layer.out_features
        k = min(int(config.ratio * n), n - 1)
        group = graph.get_pruning_group(
            layer, graph.get_pruner_of_module(layer).prune_out_channels, list(range(n))
        )
        producers, consumers = coupled_modules(graph, group)
        if not consumers:
            notes.append(f"prune_neurons: {name} kept whole: its outputs feed no other layer")
            continue
        if [m for m in producers if isinstance(m, nn.Linear) and m not in chosen_set]:
            notes.append(f"prune_neurons: {name} kept whole: coupled with an untargeted layer")
            continue
        if k == 0:
            continue
        if config.criterion == "data_free":
            _check_mergeable(name, layer, producers, consumers)
            plan = merge_plan(_incoming(layer), consumers[0].weight, k)
            for j, i in plan:
                for c in consumers:  # fold j's outgoing weights into its survivor i
                    c.weight.data[:, i] += c.weight.data[:, j]
            idxs = [j for j, _ in plan]
        else:
            acts = neuron_activations(model, consumers, data, config)
            idxs = torch.argsort(sum(acts[c] for c in consumers))[:k].tolist()
        if idxs:
            remove_channels(model, name, idxs, graph=graph)
    return model


def _check_mergeable(
    name: str, layer: nn.Linear, producers: list[nn.Module], consumers: list[nn.Module]
) -> None:
    """The Srinivas-Babu merge assumes linear → elementwise activation → linear."""
    if producers != [layer] or not all(isinstance(c, nn.Linear) for c in consumers):
        kinds = ", ".join(type(m).__name__ for m in producers + consumers)
        raise ConfigError(
            f"data-free neuron pruning of {name!r} needs Linear → activation → Linear, but its "
            f"neurons also feed or are coupled with: {kinds}. Use criterion 'activation' or "
            f"exclude {name!r}."
        )


@register_technique("prune_neurons", NeuronPruning, "remove hidden FC neurons (data-free merge)")
def _prune_neurons_stage(
    model: nn.Module, config: NeuronPruning, context: StageContext
) -> nn.Module:
    out = prune_neurons_(model, config, data=context.data, notes=context.notes)
    context.note(
        f"prune_neurons: removed {config.ratio:.0%} of the hidden neurons ({config.criterion}); "
        "incoming and outgoing connections removed physically"
    )
    return out
