"""Stage-width pruning of option-A CIFAR ResNets: narrow the residual stream of each stage.

Torch-Pruning cannot index an option-A shortcut's channel pad, so :class:`FilterPruning` leaves
the residual stream of :class:`~dwindle.models.resnet.ResNetCifar` whole. Here the structure is
known instead of traced: a stage's stream is written by the stem (first stage) and by every
block's ``conv2``/``bn2``, read by the blocks' ``conv1``, the next stage's first block and the
final ``linear``; the stage transition shortcut becomes a :class:`ChannelGather` that maps each
kept output channel to its kept source (or to zero). A channel is ranked by the filter norms of
every layer writing it plus their batch-norm scales |γ|, summed (a group criterion: what is
removed with the channel decides). The primitive :func:`keep_stage_channels_` removes
hand-chosen channels; :func:`prune_stage_widths_` is the driver. Every change is checked by a
forward pass (:func:`~dwindle.pruning.verify.guarded`) and undone on failure.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dwindle._imports import require
from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.models.resnet import DownsampleA
from dwindle.pruning.structured import example_input_for
from dwindle.pruning.verify import guarded
from dwindle.targets import matches

__all__ = [
    "ChannelGather",
    "StageWidthPruning",
    "gather_pruner",
    "keep_stage_channels_",
    "prune_stage_widths_",
]

_BLOCK_PARTS = ("conv1", "bn1", "conv2", "bn2", "shortcut")
_HINT = "use FilterPruning instead, which prunes the channels inside blocks of any traced model"


class ChannelGather(nn.Module):
    """A pruned option-A shortcut: subsample by ``stride``, then pick input channels by ``index``.

    ``index[j]`` is the input channel that output channel ``j`` copies, or ``in_channels`` for
    a zero channel. No FLOPs; exports to ONNX as Slice, Pad and Gather.
    """

    index: torch.Tensor

    def __init__(self, index: torch.Tensor, in_channels: int, stride: int = 2) -> None:
        super().__init__()
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or not len(index) or index.min() < 0 or index.max() > in_channels:
            raise ValueError(f"index must be 1-d with entries in [0, {in_channels}]")
        self.in_channels = in_channels
        self.stride = stride
        self.register_buffer("index", index)

    def keep_outputs(self, keep: torch.Tensor) -> None:
        """Keep only output channels ``keep`` (sorted positions)."""
        self.index = self.index[keep.to(self.index.device)]

    def keep_inputs(self, keep: torch.Tensor) -> None:
        """The input keeps only channels ``keep``; outputs copying a dropped one become zero."""
        pos = torch.full((self.in_channels + 1,), len(keep), dtype=torch.long)
        pos[keep.cpu()] = torch.arange(len(keep))  # old input channel -> new position
        self.index = pos[self.index.cpu()].to(self.index.device)
        self.in_channels = len(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        # index_select (not x[:, index]) so ONNX gets one Gather rather than Transpose/GatherND
        return F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, 0, 1)).index_select(1, self.index)

    def extra_repr(self) -> str:
        zeros = int((self.index == self.in_channels).sum())
        return (
            f"in_channels={self.in_channels}, out_channels={len(self.index)}, "
            f"stride={self.stride}, zeros={zeros}"
        )


@functools.cache
def gather_pruner() -> Any:
    """Torch-Pruning's pruner for :class:`ChannelGather` (extra ``pruning``).

    Input and output channels are pruned independently (the gather maps them explicitly), so a
    dependency graph built with ``customized_pruners={ChannelGather: gather_pruner()}`` follows
    a residual stream into a pruned shortcut instead of treating the gather as element-wise.
    """
    tp = require("torch_pruning", "pruning", "structured pruning")

    class _GatherPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = (ChannelGather,)

        def prune_out_channels(self, layer: ChannelGather, idxs: Sequence[int]) -> nn.Module:
            layer.keep_outputs(_complement(len(layer.index), idxs))
            return layer

        def prune_in_channels(self, layer: ChannelGather, idxs: Sequence[int]) -> nn.Module:
            layer.keep_inputs(_complement(layer.in_channels, idxs))
            return layer

        def get_out_channels(self, layer: ChannelGather) -> int:
            return len(layer.index)

        def get_in_channels(self, layer: ChannelGather) -> int:
            return layer.in_channels

    return _GatherPruner()


def _complement(n: int, idxs: Sequence[int]) -> torch.Tensor:
    drop = {int(i) for i in idxs}
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


class StageWidthPruning(TargetedConfig):
    """Remove ``ratio`` of each stage's residual-stream channels (option-A CIFAR ResNets).

    ``ratios`` overrides ``ratio`` per stage (``{"layer3": 0.5}``; 0 keeps a stage whole);
    ``targets`` / ``exclude`` select stages by name (``"layer*"``). ``criterion``: ``l1`` or
    ``l2`` norm of each writing layer's filter, plus its batch norm's |γ|, summed over the
    layers writing the stream. ``round_to``: keep a multiple of this many channels (nearest).
    """

    ratio: float = Field(0.5, gt=0, lt=1)
    ratios: dict[str, Annotated[float, Field(ge=0, lt=1)]] = Field(default_factory=dict)
    criterion: Literal["l1", "l2"] = "l1"
    round_to: int = Field(1, ge=1)


@dataclass
class _Stage:
    name: str
    blocks: list[nn.Module]  # removed blocks (nn.Identity) left out
    width: int  # residual-stream channels
    in_width: int  # channels of the stream feeding it


def _as_gather(shortcut: nn.Module, in_width: int) -> ChannelGather:
    """A transition shortcut as a new :class:`ChannelGather` (a copy; the model is untouched)."""
    if isinstance(shortcut, ChannelGather):
        return copy.deepcopy(shortcut)
    assert isinstance(shortcut, DownsampleA)
    index = torch.arange(in_width + 2 * shortcut.pad) - shortcut.pad
    index[(index < 0) | (index >= in_width)] = in_width
    return ChannelGather(index, in_width, stride=2)


def _stages(model: nn.Module) -> list[_Stage]:
    """The model's stages, checked against the supported structure (ConfigError otherwise)."""
    kind = type(model).__name__
    parts = {"conv1": nn.Conv2d, "bn1": nn.BatchNorm2d, "linear": nn.Linear}
    for attr, cls in parts.items():
        if not isinstance(getattr(model, attr, None), cls):
            raise ConfigError(
                f"stage-width pruning supports option-A CIFAR ResNets (stem conv1/bn1, stages of "
                f"blocks, final linear); {kind} has no {cls.__name__} {attr!r}; {_HINT}"
            )
    width = model.conv1.out_channels
    stages: list[_Stage] = []
    for name, child in model.named_children():
        if name in parts:
            continue
        if not isinstance(child, nn.Sequential) or not list(child.parameters()):
            if list(child.parameters()):
                raise ConfigError(
                    f"stage-width pruning does not know how {kind}.{name} "
                    f"({type(child).__name__}) uses the residual stream; {_HINT}"
                )
            continue
        blocks = [(f"{name}.{i}", b) for i, b in enumerate(child) if not isinstance(b, nn.Identity)]
        stage = _Stage(name, [b for _, b in blocks], width, width)
        for i, (bname, block) in enumerate(blocks):
            missing = [p for p in _BLOCK_PARTS if not hasattr(block, p)]
            if missing:
                raise ConfigError(
                    f"stage-width pruning found no {', '.join(missing)} in block {bname!r} "
                    f"({type(block).__name__}); it supports blocks with {', '.join(_BLOCK_PARTS)}"
                    f"; {_HINT}"
                )
            sc = block.shortcut
            transition = i == 0 and bool(stages)
            allowed = (DownsampleA, ChannelGather) if transition else (nn.Identity,)
            if not isinstance(sc, allowed):
                want = "an option-A shortcut" if transition else "an identity shortcut"
                raise ConfigError(
                    f"stage-width pruning needs {want} in {bname!r}, found {type(sc).__name__}; "
                    f"{_HINT}"
                )
            if transition:
                stage.width = len(_as_gather(sc, width).index)
            convs = (block.conv1, block.conv2)
            if any(not isinstance(c, nn.Conv2d) or c.groups != 1 for c in convs) or (
                block.conv1.in_channels != (stage.in_width if i == 0 else stage.width)
                or block.conv2.out_channels != stage.width
                or block.bn2.num_features != stage.width
            ):
                raise ConfigError(
                    f"stage-width pruning: block {bname!r} does not fit a residual stream of "
                    f"{stage.width} channels (ungrouped conv1/conv2 expected); {_HINT}"
                )
        if not blocks:
            continue
        stages.append(stage)
        width = stage.width
    if not stages:
        raise ConfigError(
            f"stage-width pruning found no stages in {kind} (nn.Sequential children of blocks "
            f"with {', '.join(_BLOCK_PARTS)}); {_HINT}"
        )
    if model.linear.in_features != width:
        raise ConfigError(
            f"stage-width pruning: {kind}.linear takes {model.linear.in_features} features, "
            f"not the last stage's {width} channels (global average pooling expected); {_HINT}"
        )
    return stages


def _producers(model: nn.Module, stages: list[_Stage], k: int) -> list[tuple[nn.Module, nn.Module]]:
    first = [(model.conv1, model.bn1)] if k == 0 else []
    return first + [(b.conv2, b.bn2) for b in stages[k].blocks]


def _take(module: nn.Module, names: Sequence[str], idx: torch.Tensor, dim: int) -> None:
    """Keep entries ``idx`` along ``dim`` of ``module``'s parameters / buffers ``names``."""
    for name in names:
        t = getattr(module, name, None)
        if t is None:
            continue
        new = t.detach().index_select(dim, idx.to(t.device)).clone()
        if isinstance(t, nn.Parameter):
            new = nn.Parameter(new, requires_grad=t.requires_grad)
        setattr(module, name, new)


def _narrow_out(conv: nn.Conv2d, bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    _take(conv, ("weight", "bias"), idx, 0)
    conv.out_channels = len(idx)
    _take(bn, ("weight", "bias", "running_mean", "running_var"), idx, 0)
    bn.num_features = len(idx)


def _narrow_in(layer: nn.Module, idx: torch.Tensor) -> None:
    _take(layer, ("weight",), idx, 1)
    if isinstance(layer, nn.Linear):
        layer.in_features = len(idx)
    else:
        layer.in_channels = len(idx)


def keep_stage_channels_(
    model: nn.Module,
    keep: Mapping[str, Sequence[int]],
    *,
    example_input: torch.Tensor,
) -> list[str]:
    """Primitive: keep only channels ``keep[stage]`` of each named stage's stream, in place.

    Stages not in ``keep`` stay whole. Producers lose output channels, consumers input
    channels, and each stage transition becomes a :class:`ChannelGather`. The change is checked
    by a forward pass on ``example_input`` (same output shapes); on any failure the model is
    restored. Returns the names of the changed modules.
    """
    stages = _stages(model)
    names = [s.name for s in stages]
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ConfigError(f"no stage {unknown[0]!r} in the model; stages: {', '.join(names)}")
    kept: list[torch.Tensor] = []
    for s in stages:
        idx = sorted({int(i) for i in keep.get(s.name, range(s.width))})
        if not idx or idx[0] < 0 or idx[-1] >= s.width:
            raise ConfigError(
                f"keep[{s.name!r}] must hold channel indices in [0, {s.width}), at least one "
                f"(got {len(idx)} indices spanning {idx[:1]}..{idx[-1:]})"
            )
        kept.append(torch.tensor(idx, dtype=torch.long))
    where = {m: n for n, m in model.named_modules()}
    with guarded(model, example_input, []) as changed:
        for k, (s, idx) in enumerate(zip(stages, kept, strict=True)):
            prev = kept[k - 1] if k else None
            if k and (len(idx) < s.width or len(prev) < s.in_width):
                gather = _as_gather(s.blocks[0].shortcut, s.in_width)
                gather.keep_outputs(idx)
                gather.keep_inputs(prev)
                s.blocks[0].shortcut = gather
                changed.append(f"{where[s.blocks[0]]}.shortcut")
            if len(idx) == s.width:
                continue
            for conv, bn in _producers(model, stages, k):
                _narrow_out(conv, bn, idx)
                changed.append(where[conv])
            consumers = [b.conv1 for b in s.blocks[1 if k else 0 :]]
            consumers.append(stages[k + 1].blocks[0].conv1 if k + 1 < len(stages) else model.linear)
            for layer in consumers:
                _narrow_in(layer, idx)
                changed.append(where[layer])
    return changed


def _stage_scores(model: nn.Module, stages: list[_Stage], k: int, p: int) -> torch.Tensor:
    """Σ over the layers writing stage ``k``'s stream of ‖filter‖_p + |γ| per channel."""
    score = torch.zeros(stages[k].width, dtype=torch.float64)
    for conv, bn in _producers(model, stages, k):
        score += conv.weight.detach().double().flatten(1).norm(p=p, dim=1).cpu()
        if bn.weight is not None:
            score += bn.weight.detach().double().abs().cpu()
    return score


def _kept_count(config: StageWidthPruning, stage: _Stage, ratio: float) -> int:
    n, r = stage.width, config.round_to
    keep = n - int(ratio * n)
    if r > 1 and keep < n:
        keep = min(r * int(keep / r + 0.5), n - n % r)
    if keep < 1:
        raise ConfigError(
            f"ratio {ratio} of stage {stage.name!r} ({n} channels) with round_to={r} would "
            f"keep {keep} channels; choose a smaller ratio or round_to"
        )
    return keep


def prune_stage_widths_(
    model: nn.Module,
    config: StageWidthPruning,
    *,
    example_input: torch.Tensor | None = None,
    data: Any = None,
) -> dict[str, list[int]]:
    """Narrow each targeted stage's residual stream in place; return the kept channels per stage.

    Channel indices are those of the stream before this call. The model must be an option-A
    CIFAR ResNet (possibly already pruned); anything else is a :class:`ConfigError`.
    """
    ex = example_input_for(example_input, data, "stage-width pruning")
    stages = _stages(model)
    names = [s.name for s in stages]
    for pattern in config.targets:
        if not any(matches(n, [pattern]) for n in names):
            raise ConfigError(
                f"target pattern {pattern!r} matches no stage; stages are: {', '.join(names)}"
            )
    chosen = {n for n in names if matches(n, config.targets) and not matches(n, config.exclude)}
    for name in config.ratios:
        if name not in chosen:
            why = "not a stage" if name not in names else "left out by targets/exclude"
            raise ConfigError(
                f"ratios names {name!r}, which is {why}; stages chosen: {', '.join(sorted(chosen))}"
            )
    p = 1 if config.criterion == "l1" else 2
    keep: dict[str, list[int]] = {}
    for k, s in enumerate(stages):
        ratio = config.ratios.get(s.name, config.ratio) if s.name in chosen else 0.0
        n_keep = _kept_count(config, s, ratio)
        order = torch.argsort(_stage_scores(model, stages, k, p), descending=True, stable=True)
        keep[s.name] = sorted(order[:n_keep].tolist())
    keep_stage_channels_(model, keep, example_input=ex)
    return keep


@register_technique(
    "prune_stage_widths",
    StageWidthPruning,
    "narrow the residual stream of each stage of option-A CIFAR ResNets",
)
def _prune_stage_widths_stage(
    model: nn.Module, config: StageWidthPruning, context: StageContext
) -> nn.Module:
    before = {s.name: s.width for s in _stages(model)}
    keep = prune_stage_widths_(model, config, data=context.data)
    widths = ", ".join(f"{n} {before[n]}→{len(k)}" for n, k in keep.items())
    context.note(
        f"prune_stage_widths: residual-stream widths {widths} ({config.criterion}); option-A "
        "shortcuts became channel gathers; the result is a plain dense smaller model"
    )
    return model
