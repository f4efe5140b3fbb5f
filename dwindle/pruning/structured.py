"""Filter / channel pruning of conv layers with physical removal across every dependent layer.

Channels are ranked by the L1 or L2 norm of their filters (Li et al. 2017, "Pruning Filters for
Efficient ConvNets") or by the first-order Taylor estimate of the loss change
(Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"), then removed for
real: the conv's output channels, its batch norm, the next conv/linear's input channels and,
through residual adds and concatenations, every layer coupled to them. The coupling comes from
Torch-Pruning's ``DependencyGraph`` (imported lazily, extra ``pruning``); the primitive
:func:`remove_channels` prunes one hand-chosen group, :func:`prune_filters_` is the driver.
The result is a plain, dense, smaller ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from dwindle._imports import require
from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError, DwindleError
from dwindle.pruning.channel_scores import CONV_TYPES, channel_scores, group_scores
from dwindle.pruning.verify import guarded
from dwindle.targets import matches, select_modules

__all__ = [
    "CONV_TYPES",
    "FilterPruning",
    "TracingError",
    "channel_scores",
    "coupled_modules",
    "example_input_for",
    "group_scores",
    "prune_filters_",
    "remove_channels",
    "select_supported",
    "trace_channels",
]

# Ops through which Torch-Pruning maps channel indices explicitly; elsewhere a channel count that
# changes inside one coupled group means an op it does not understand (e.g. a channel pad).
_INDEX_MAPPING_OPS = ("_ConcatOp", "_SplitOp", "_UnbindOp", "_ExpandOp", "_ReshapeOp")


class TracingError(DwindleError, RuntimeError):
    """The model's graph cannot be traced for structured pruning; the message names the layer."""


class FilterPruning(TargetedConfig):
    """Remove ``ratio`` of the output channels of each targeted conv (and all that depends on them).

    ``criterion``: ``l1`` / ``l2`` filter norm (Li et al. 2017) or ``taylor`` (first-order Taylor,
    Molchanov et al. 2019; needs data: ``taylor_batches`` training batches of ``batch_size``).
    Channels coupled by residual adds are ranked together (scores summed over the group).
    ``scope`` (``l1``/``l2``): ``"filter"`` scores a channel by the conv filters that produce it
    (Li et al. 2017); ``"group"`` by every weight removed with it: those filters, the scales of
    the norm layers it passes through and the input slices of the layers that consume it
    (Σ|w|^p over the group, the ranking of Torch-Pruning's group magnitude importance; Fang et
    al. 2023, "DepGraph"). After a batch norm a filter's own norm says little (the norm layer
    rescales its output), which the consumers' weights and the norm scale do say.
    ``kept``: how a fractional channel count rounds: ``"up"`` removes ``floor(ratio·n)``,
    ``"down"`` keeps ``floor((1 - ratio)·n)`` as Li et al. 2017's ResNet code does.
    """

    ratio: float = Field(0.5, ge=0, lt=1)
    kept: Literal["up", "down"] = "up"
    criterion: Literal["l1", "l2", "taylor"] = "l1"
    scope: Literal["filter", "group"] = "filter"
    taylor_batches: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)


def example_input_for(example_input: torch.Tensor | None, data: Any, what: str) -> torch.Tensor:
    """A batch-1 input for tracing: ``example_input`` or one test sample of ``data``."""
    if example_input is not None:
        return example_input
    if data is not None:
        return data.example_input(1)
    raise ConfigError(
        f"{what} needs an input to trace the model: pass example_input=<a batch-1 tensor, "
        "e.g. torch.randn(1, 3, 32, 32)> or data=<DataBundle>"
    )


def select_supported(
    model: nn.Module, config: TargetedConfig, types: tuple[type[nn.Module], ...], what: str
) -> list[tuple[str, nn.Module]]:
    """Targeted modules of ``types``; a pattern that selects only other types is an error."""
    matched = select_modules(model, config.targets, config.exclude)
    supported = [(n, m) for n, m in matched if isinstance(m, types)]
    kinds = ", ".join(t.__name__ for t in types)
    if not any(isinstance(m, types) for m in model.modules()):
        raise ConfigError(
            f"{what} works on {kinds} layers and {type(model).__name__} has none"
            + ("; for Linear layers use prune_neurons_" if nn.Linear not in types else "")
        )
    for pattern in config.targets:
        hits = [(n, m) for n, m in matched if matches(n, [pattern])]
        if hits and not any(isinstance(m, types) for _, m in hits):
            shown = ", ".join(f"{n!r} ({type(m).__name__})" for n, m in hits[:6])
            raise ConfigError(
                f"target {pattern!r} selects only layers {what} cannot prune: {shown}; "
                f"supported layer types: {kinds}. Change the target or exclude those layers."
            )
    if not supported:
        raise ConfigError(
            f"targets {list(config.targets)} (exclude {list(config.exclude)}) select no "
            f"{kinds} layer, so {what} would change nothing; narrow exclude or widen targets"
        )
    return supported


@contextmanager
def _watch_forward(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Track which module is running (for error messages) and which cuts the autograd graph."""
    state: dict[str, Any] = {"stack": [], "breaks": []}
    names = {m: n for n, m in model.named_modules()}

    def grad_tensors(obj: Any) -> list[torch.Tensor]:
        if isinstance(obj, torch.Tensor):
            return [obj] if obj.is_floating_point() else []
        if isinstance(obj, (tuple, list)):
            return [t for o in obj for t in grad_tensors(o)]
        if isinstance(obj, dict):
            return [t for o in obj.values() for t in grad_tensors(o)]
        return []

    def pre(module: nn.Module, args: tuple[Any, ...]) -> None:
        state["stack"].append(names.get(module, type(module).__name__))

    def post(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        state["stack"].pop()
        ins, outs = grad_tensors(args), grad_tensors(output)
        if any(t.requires_grad for t in ins) and outs and not any(t.requires_grad for t in outs):
            state["breaks"].append((names.get(module, ""), type(module).__name__))

    handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
    handles += [m.register_forward_hook(post) for m in model.modules()]
    try:
        yield state
    finally:
        for h in handles:
            h.remove()


def trace_channels(
    model: nn.Module, example_input: torch.Tensor, needed: Sequence[str] = ()
) -> Any:
    """Build Torch-Pruning's ``DependencyGraph`` of ``model``, failing with the guilty layer.

    ``needed``: module names that must appear in the traced graph (the layers to prune).
    """
    from dwindle.pruning.stage_width import ChannelGather, gather_pruner

    tp = require("torch_pruning", "pruning", "structured pruning")
    was_training = model.training
    model.eval()  # tracing must not update batch-norm statistics
    with _watch_forward(model) as state, torch.enable_grad():
        try:
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_input,
                verbose=False,
                customized_pruners={ChannelGather: gather_pruner()},  # a pruned option-A shortcut
            )
        except Exception as exc:  # tracing raises many unrelated types
            where = state["stack"][-1] if state["stack"] else None
            layer = f" in module {where!r}" if where else ""
            raise TracingError(
                f"structured pruning cannot trace {type(model).__name__}: {type(exc).__name__}"
                f"{layer}: {exc}. Exclude that layer and the layers feeding it, e.g. "
                f"exclude=({(where or '<layer>')!r},), or check that example_input fits the model."
            ) from exc
        finally:
            model.train(was_training)
    modules = dict(model.named_modules())
    missing = [n for n in needed if modules[n] not in graph.module2node]
    if missing:
        if state["breaks"]:
            name, kind = state["breaks"][0]
            culprit = f"module {name!r} ({kind}) cuts the autograd graph (its output does not "
            culprit += "depend on its input through autograd), so"
        else:
            culprit = "the model's output does not depend on them through autograd, so"
        raise TracingError(
            f"structured pruning cannot trace {type(model).__name__}: {culprit} the channels of "
            f"{', '.join(repr(n) for n in missing[:6])} cannot be followed. Exclude them, e.g. "
            f"exclude={tuple(missing[:3])!r}, or make that layer differentiable."
        )
    graph.dwindle_names = {m: n for n, m in model.named_modules()}
    return graph


def _out_fn(graph: Any, module: nn.Module) -> Any:
    return graph.get_pruner_of_module(module).prune_out_channels


def _group(graph: Any, module: nn.Module, idxs: Sequence[int]) -> Any:
    return graph.get_pruning_group(module, _out_fn(graph, module), list(idxs))


def coupled_modules(graph: Any, group: Any) -> tuple[list[nn.Module], list[nn.Module]]:
    """``(producers, consumers)`` of a group: layers losing output / input channels."""
    producers, consumers = [], []
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        if not isinstance(module, nn.Module) or type(module).__module__.startswith("torch_pruning"):
            continue
        if graph.is_out_channel_pruning_fn(handler):
            producers.append(module)
        elif graph.is_in_channel_pruning_fn(handler):
            consumers.append(module)
    return producers, consumers


def _unmapped_op(graph: Any, group: Any, root: nn.Module) -> str | None:
    """Name of a layer whose channel count disagrees with the root's inside a plain group."""
    ops = {type(item.dep.target.module).__name__ for item in group}
    if ops & set(_INDEX_MAPPING_OPS) - {"_ReshapeOp"}:
        return None
    n = graph.get_out_channels(root)
    producers, _ = coupled_modules(graph, group)
    for module in producers:
        if graph.get_out_channels(module) != n:
            return graph.dwindle_names.get(module, type(module).__name__)
    return None


def remove_channels(
    model: nn.Module,
    module_name: str,
    idxs: Sequence[int],
    example_input: torch.Tensor | None = None,
    *,
    graph: Any = None,
) -> tuple[str, ...]:
    """Primitive: physically remove output channels ``idxs`` of ``module_name``, in place.

    Every dependent layer loses the matching channels too (batch norm, the next layers' inputs,
    layers coupled by residual adds, concatenation slices). Pass ``graph`` from
    :func:`trace_channels` to prune several groups without re-tracing. Returns the names of
    the modules that changed. With an ``example_input`` the change is checked by a forward pass
    (same output shapes as before; :class:`TracingError` naming the failing layer otherwise,
    and the model is restored); drivers that pass ``graph`` check once after all groups.
    """
    modules = dict(model.named_modules())
    if module_name not in modules:
        known = ", ".join(n for n, m in modules.items() if isinstance(m, (*CONV_TYPES, nn.Linear)))
        raise ConfigError(f"no module {module_name!r} in the model; prunable layers: {known}")
    module = modules[module_name]
    if graph is None:
        ex = example_input_for(example_input, None, "remove_channels")
        graph = trace_channels(model, ex, [module_name])
    pruner = graph.get_pruner_of_module(module)
    n = pruner.get_out_channels(module) if pruner is not None else None
    if n is None:
        raise ConfigError(
            f"remove_channels cannot prune module {module_name!r} ({type(module).__name__}); "
            "supported layer types: Conv1d, Conv2d, Conv3d, Linear"
        )
    idxs = sorted({int(i) for i in idxs})
    if not idxs or idxs[0] < 0 or idxs[-1] >= n or len(idxs) >= n:
        raise ConfigError(
            f"idxs must be distinct channel indices in [0, {n}) leaving at least one channel of "
            f"{module_name!r} (got {len(idxs)} indices spanning {idxs[:1]}..{idxs[-1:]})"
        )
    group = _group(graph, module, idxs)
    bad = _unmapped_op(graph, group, module)
    if bad is not None:
        raise TracingError(
            f"channels of {module_name!r} are coupled with {bad!r}, whose channel count differs, "
            "through an op Torch-Pruning cannot index (e.g. a channel pad in an option-A "
            f"shortcut); pruning them would misalign channels. Exclude {module_name!r}."
        )
    producers, consumers = coupled_modules(graph, group)
    names = tuple(dict.fromkeys(graph.dwindle_names.get(m, "?") for m in producers + consumers))
    if example_input is None:
        group.prune(record_history=False)
        return names
    with guarded(model, example_input, list(names)):
        group.prune(record_history=False)
    return names


def prune_filters_(
    model: nn.Module,
    config: FilterPruning,
    *,
    example_input: torch.Tensor | None = None,
    data: Any = None,
    notes: list[str] | None = None,
) -> nn.Module:
    """Prune ``config.ratio`` of the channels of every targeted conv in place and return ``model``.

    Channel groups whose coupled layers are partly excluded, or which pass through an op that
    Torch-Pruning cannot map (an option-A shortcut's channel pad), are left whole; each such
    decision is appended to ``notes``. A shortcut that stage-width pruning turned into a
    :class:`~dwindle.pruning.stage_width.ChannelGather` is followed (its index is updated), so
    the residual streams on both its sides are pruned too. The pruned model must run and give
    the original output shapes on the example input; otherwise :class:`TracingError` names the
    failing layer and the model is restored unchanged.
    """
    notes = notes if notes is not None else []
    if config.scope == "group" and config.criterion == "taylor":
        raise ConfigError(
            "FilterPruning(scope='group') sums weight magnitudes over the channel group: use it "
            "with criterion 'l1' or 'l2' (criterion 'taylor' already measures the loss change "
            "of the whole channel)"
        )
    chosen = select_supported(model, config, CONV_TYPES, "filter pruning")
    ex = example_input_for(example_input, data, "filter pruning")
    graph = trace_channels(model, ex, [n for n, _ in chosen])
    chosen_set = {m for _, m in chosen}
    group_scope = config.scope == "group"  # scores come from each group below, not per conv
    scores_of = {} if group_scope else channel_scores(model, [m for _, m in chosen], config, data)
    plans: list[tuple[str, nn.Module, list[int]]] = []
    seen: set[nn.Module] = set()
    for name, module in chosen:
        if module in seen:
            continue
        n = graph.get_out_channels(module)
        group = _group(graph, module, range(n))
        producers, _ = coupled_modules(graph, group)
        seen.update(producers)
        convs = [m for m in producers if isinstance(m, (*CONV_TYPES, nn.Linear))]
        left_out = [graph.dwindle_names[m] for m in convs if m not in chosen_set]
        if left_out:
            notes.append(f"prune_filters: {name} kept whole: coupled with untargeted {left_out}")
            continue
        bad = _unmapped_op(graph, group, module)
        if bad is not None:
            notes.append(
                f"prune_filters: {name} kept whole: coupled with {bad} through an op that "
                "changes the channel count (e.g. an option-A shortcut pad)"
            )
            continue
        if config.kept == "up":
            k = min(int(config.ratio * n), n - 1)
        else:
            k = n - max(1, int(n * (1 - config.ratio)))
        if k == 0:
            continue
        if group_scope:
            score = group_scores(graph, group, n, 1 if config.criterion == "l1" else 2)
        else:
            score = sum(scores_of[m] for m in convs)
        plans.append((name, module, torch.argsort(score)[:k].tolist()))
    with guarded(model, ex, []) as changed:
        for name, _module, idxs in plans:
            changed += remove_channels(model, name, idxs, graph=graph)
    return model


@register_technique("prune_filters", FilterPruning, "remove conv filters/channels (L1, L2, Taylor)")
def _prune_filters_stage(
    model: nn.Module, config: FilterPruning, context: StageContext
) -> nn.Module:
    out = prune_filters_(model, config, data=context.data, notes=context.notes)
    context.note(
        f"prune_filters: removed {config.ratio:.0%} of the channels of the targeted convs "
        f"({config.criterion}); the result is a plain dense smaller model"
    )
    return out
