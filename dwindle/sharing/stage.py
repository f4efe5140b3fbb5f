"""The ``share`` stage (k-means clustering, HashedNets, cross-layer tying) and the ``encode``
stage (Huffman coding into the ``deepc`` container): configs, verbs, registration."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from dwindle.config import Config, StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.sharing.clustering import CLUSTERABLE_TYPES, cluster_layer
from dwindle.sharing.container import (
    DEFAULT_INDEX_BITS,
    FORMAT,
    check_index_bits,
    decode_state,
    encode_model,
)
from dwindle.sharing.hashing import HashedLinear
from dwindle.sharing.tying import tie_
from dwindle.targets import matches, select_modules

__all__ = ["Encode", "Share", "encode_", "share_"]

_KIND_KEYS = ("conv", "linear")


def _check_bits(bits: int | dict[str, int], lo: int = 1, hi: int = 16) -> int | dict[str, int]:
    values = bits.values() if isinstance(bits, dict) else [bits]
    if not values or any(not lo <= b <= hi for b in values):
        raise ValueError(f"bits must be integers from {lo} to {hi} (got {bits})")
    return bits


class Share(TargetedConfig):
    """Share weights: ``method`` ``kmeans`` (Deep Compression clustering), ``hash``
    (HashedNets on linear layers) or ``tie`` (ALBERT-style cross-layer tying).

    kmeans: ``bits`` per layer, an int or a mapping with ``conv``/``linear`` keys and/or layer
    name patterns (patterns win), ``init`` linear/density/random, ``iterations``, ``seed``.
    hash: ``ratio`` = real parameters / virtual weights per layer (the paper's compression
    factor, e.g. 1/8), ``seed``. tie: ``tie_init`` mean/first. Fine-tune afterwards.
    """

    method: Literal["kmeans", "hash", "tie"] = "kmeans"
    bits: int | dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_INDEX_BITS))
    init: Literal["linear", "density", "random"] = "linear"
    iterations: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    ratio: float = Field(0.125, gt=0, le=1)
    tie_init: Literal["mean", "first"] = "mean"

    @field_validator("bits")
    @classmethod
    def _bits_range(cls, bits: int | dict[str, int]) -> int | dict[str, int]:
        return _check_bits(bits)


def _bits_for(name: str, layer: nn.Module, bits: int | dict[str, int]) -> int:
    if isinstance(bits, int):
        return bits
    for pattern, value in bits.items():
        if pattern not in _KIND_KEYS and matches(name, [pattern]):
            return value
    kind = "linear" if isinstance(layer, nn.Linear) else "conv"
    if kind not in bits:
        raise ConfigError(
            f"share: no bits for layer {name!r} ({type(layer).__name__}); add a {kind!r} key "
            f"or a pattern matching it to bits={bits}"
        )
    return bits[kind]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _chosen(
    model: nn.Module, cfg: Share, types: tuple[type[nn.Module], ...], what: str, notes: list[str]
) -> list[tuple[str, nn.Module]]:
    chosen = [
        (n, m)
        for n, m in select_modules(model, cfg.targets, cfg.exclude)
        if any(True for _ in m.parameters(recurse=False))
    ]
    bad = [f"{n} ({type(m).__name__})" for n, m in chosen if not isinstance(m, types)]
    if bad and tuple(cfg.targets) != ("*",):
        raise ConfigError(
            f"share ({cfg.method}): cannot share the weights of layer {', '.join(bad)}; "
            f"it supports {what}; change targets or add the layer to exclude"
        )
    if bad:
        notes.append(f"share ({cfg.method}): left {', '.join(bad)} unshared ({what} only)")
    good = [(n, m) for n, m in chosen if isinstance(m, types)]
    if not good:
        raise ConfigError(f"share ({cfg.method}): targets select no layer ({what} only)")
    return good


def share_(model: nn.Module, config: Share, context: StageContext | None = None) -> nn.Module:
    """Share ``model``'s weights in place as ``config`` says; remarks go to ``context``."""
    notes: list[str] = []
    if config.method == "tie":
        groups = tie_(model, config.targets, config.exclude, config.tie_init)
        if not groups and tuple(config.targets) != ("*",):
            raise ConfigError(
                f"share (tie): no two modules matching {list(config.targets)} have the same "
                "type and parameter shapes, so there is nothing to tie"
            )
        notes.append(
            "share (tie): "
            + (
                "; ".join(" = ".join(g) for g in groups)
                if groups
                else "no identically shaped layers to tie"
            )
        )
    elif config.method == "hash":
        for name, layer in _chosen(model, config, (nn.Linear,), "nn.Linear", notes):
            real = max(1, round(config.ratio * layer.weight.numel()))
            _replace(model, name, HashedLinear.from_linear(layer, real, config.seed))
            notes.append(f"share (hash): {name} → {real} real weights")
    else:
        done = []
        for name, layer in _chosen(model, config, CLUSTERABLE_TYPES, "Linear/Conv1d/Conv2d", notes):
            bits = _bits_for(name, layer, config.bits)
            try:
                new = cluster_layer(
                    layer, bits, config.init, iterations=config.iterations, seed=config.seed
                )
            except ConfigError as exc:
                raise ConfigError(f"share (kmeans) layer {name!r}: {exc}") from None
            _replace(model, name, new)
            done.append(f"{name} {bits} bits")
        notes.append(
            "share (kmeans): " + ", ".join(done) + ". Parameter counts still count every "
            "weight (each is now a codebook index: judge size by bytes); fine-tuning trains the "
            "centroids (gradients summed per cluster)"
        )
    if config.method != "tie" and getattr(model, "dwindle_format", None) not in (None, FORMAT):
        # an earlier stage's packed format (e.g. pruning's "sparse") knows nothing of the new
        # layers; the entropy-coded file is the encode stage's job
        notes.append(f"share: file format {model.dwindle_format!r} → safetensors until encode")
        model.dwindle_format = "safetensors"
    if context is not None:
        for note in notes:
            context.note(note)
    return model


class Encode(Config):
    """Entropy-code the model into the ``deepc`` file (Huffman, Han et al. 2016 section 4).

    ``index_bits``: bits of a sparse position difference, per ``conv`` / ``linear`` (the
    paper: 8 and 5); larger gaps take filler entries. ``"auto"`` gives each layer the width
    (2-12 bits) that makes its coded positions smallest; the file is decoded the same way.
    """

    method: Literal["huffman"] = "huffman"
    index_bits: dict[str, int | Literal["auto"]] = Field(
        default_factory=lambda: dict(DEFAULT_INDEX_BITS)
    )

    @field_validator("index_bits")
    @classmethod
    def _keys(cls, bits: dict[str, int | Literal["auto"]]) -> dict[str, int | Literal["auto"]]:
        unknown = [k for k in bits if k not in _KIND_KEYS]
        if unknown:
            raise ValueError(f"index_bits keys are 'conv' and 'linear' (got {unknown})")
        check_index_bits(bits)
        return {**DEFAULT_INDEX_BITS, **bits}


def encode_(model: nn.Module, config: Encode, context: StageContext | None = None) -> nn.Module:
    """Make ``deepc`` the model's file format (so saving and size measurement use it) and check
    that the encoded file decodes back to exactly the model's tensors."""
    _canonical_zeros_(model)
    model.dwindle_index_bits = dict(config.index_bits)
    model.dwindle_format = FORMAT
    data, stats = encode_model(model, config.index_bits)
    decoded = decode_state(data)
    for name, tensor in model.state_dict().items():
        got = decoded.get(name)
        if got is None or not _bit_equal(got, tensor):
            raise ConfigError(f"encode: {name!r} did not survive the round trip; please report")
    coded = [s for s in stats if s["kind"] != "raw"]
    widths = ", ".join(f"{s['name']} {s['index_bits']}" for s in coded if "index_bits" in s)
    if context is not None:
        context.note(
            f"encode (huffman): {len(data)} bytes in deepc format; "
            + (
                f"{len(coded)} coded layer(s)"
                + (f"; position widths (bits): {widths}" if widths else "")
                if coded
                else "no clustered or pruned layer: everything stored raw (run share/prune first)"
            )
        )
    return model


@torch.no_grad()
def _canonical_zeros_(model: nn.Module) -> None:
    """Pruned entries become +0.0: ``w * mask`` leaves −0.0 where w < 0, which a sparse file
    (storing no pruned entry) could not give back bit for bit. Numerically the same model."""
    for module in model.modules():
        weight, mask = module._parameters.get("weight"), module._buffers.get("weight_mask")
        if (
            isinstance(weight, torch.Tensor)
            and isinstance(mask, torch.Tensor)
            and mask.shape == weight.shape
        ):
            weight.masked_fill_(~mask.bool(), 0.0)


def _bit_equal(a: object, b: object) -> bool:
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(
        a.detach().cpu().contiguous().view(torch.uint8),
        b.detach().cpu().contiguous().view(torch.uint8),
    )


@register_technique("share", Share, "weight sharing: k-means clustering, HashedNets, tying")
def _share_stage(model: nn.Module, config: Share, context: StageContext) -> nn.Module:
    return share_(model, config, context)


@register_technique("encode", Encode, "Huffman-code clustered/pruned weights (deepc file)")
def _encode_stage(model: nn.Module, config: Encode, context: StageContext) -> nn.Module:
    return encode_(model, config, context)
