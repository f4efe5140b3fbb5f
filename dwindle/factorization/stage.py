"""The ``factorize`` stage: one config, one verb, dispatching to SVD / spatial / Tucker-2 / CP /
L+S.

A layer is replaced only where the factorized form holds fewer parameters than the original
(``r·(m+n) < m·n`` for SVD); otherwise it is left alone and the stage records a note saying so.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from dwindle.config import StageContext, TargetedConfig, register_technique
from dwindle.errors import ConfigError
from dwindle.factorization.conv import (
    conv_lowrank_sparse_split,
    spatial_cost,
    spatial_singular_values,
    spatial_svd_split,
    tucker2_cost,
    tucker2_ranks,
    tucker2_split,
    unfolded_singular_values,
)
from dwindle.factorization.cp import cp_cost, cp_rank_for_ratio, cp_split
from dwindle.factorization.svd import (
    _effective_weight,
    choose_rank,
    linear_rank_cost,
    lowrank_sparse_split,
    svd_split,
)
from dwindle.targets import select_modules

__all__ = ["Factorize", "factorize_"]

Method = Literal["svd", "spatial", "tucker", "cp", "lowrank_sparse"]

_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "svd": (nn.Linear,),
    "spatial": (nn.Conv2d,),
    "tucker": (nn.Conv2d,),
    "cp": (nn.Conv2d,),
    "lowrank_sparse": (nn.Linear, nn.Conv2d),
}
_HINT = {
    "svd": "method 'svd' factorizes nn.Linear; use 'spatial' or 'tucker' for nn.Conv2d",
    "spatial": "method 'spatial' factorizes nn.Conv2d; use 'svd' for nn.Linear",
    "tucker": "method 'tucker' factorizes nn.Conv2d; use 'svd' for nn.Linear",
    "cp": "method 'cp' factorizes nn.Conv2d; use 'svd' for nn.Linear",
    "lowrank_sparse": "method 'lowrank_sparse' factorizes nn.Linear and nn.Conv2d",
}


class Factorize(TargetedConfig):
    """Replace the targeted layers by low-rank factors.

    Exactly one of ``rank`` (fixed; for ``tucker`` the same rank for both channel modes,
    capped at C and N), ``energy`` (keep this fraction of the squared singular values,
    in (0, 1]) or ``ratio`` (keep at most this fraction of the layer's parameters, which for
    linear layers is also the FLOPs fraction). ``sparse_fraction`` is the share of the
    original weights kept in S for ``lowrank_sparse`` (Yu et al. 2017); S is held as a masked
    dense tensor beside the factors, so the layer's parameters (and dense bytes) grow: only its
    non-zeros, which the rank is chosen against, shrink, and its bytes only when saved in the
    sparse format.
    """

    method: Method = "svd"
    rank: int | None = Field(None, ge=1)
    energy: float | None = Field(None, gt=0, le=1)
    ratio: float | None = Field(None, gt=0, lt=1)
    sparse_fraction: float = Field(0.02, ge=0, lt=1)
    iterations: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _one_rule(self) -> Factorize:
        given = [k for k in ("rank", "energy", "ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of rank (e.g. 32), energy (e.g. 0.9) or ratio (e.g. 0.25)"
                f"; got {given or 'none'}"
            )
        return self


def _layers(model: nn.Module, config: Factorize, notes: list[str]) -> list[tuple[str, nn.Module]]:
    supported = _TYPES[config.method]
    chosen = [
        (n, m)
        for n, m in select_modules(model, config.targets, config.exclude)
        if any(True for _ in m.parameters(recurse=False))
    ]
    bad = [(n, m) for n, m in chosen if not isinstance(m, supported)]
    if bad and tuple(config.targets) != ("*",):
        shown = ", ".join(f"{n} ({type(m).__name__})" for n, m in bad)
        raise ConfigError(
            f"cannot factorize layer {shown}: {_HINT[config.method]}; "
            "change targets or add the layer to exclude"
        )
    if bad:
        shown = ", ".join(f"{n} ({type(m).__name__})" for n, m in bad)
        notes.append(f"factorize: left {shown} as they are ({_HINT[config.method]})")
    good = [(n, m) for n, m in chosen if isinstance(m, supported)]
    if not good:
        raise ConfigError(
            f"factorize: targets {list(config.targets)} select no layer method "
            f"{config.method!r} can factorize ({_HINT[config.method]})"
        )
    return good


def _fixed_rank_fits(name: str, rank: int | None, limit: int, shape: str) -> None:
    if rank is not None and rank >= limit:
        raise ConfigError(
            f"factorize: rank {rank} ≥ min(m, n) = {limit} for layer {name!r} ({shape}), which "
            "can never save parameters; lower the rank or exclude the layer"
        )


def _plan(name: str, layer: nn.Module, cfg: Factorize) -> tuple[nn.Module | None, str]:
    """The replacement of one layer (None when it would not save) and a description."""
    rules = {"rank": cfg.rank, "energy": cfg.energy, "ratio": cfg.ratio}
    if cfg.method == "cp":
        return _plan_cp(layer, cfg)
    if cfg.method == "tucker":
        assert isinstance(layer, nn.Conv2d)
        n, c, kh, kw = layer.weight.shape
        r_in, r_out = tucker2_ranks(layer, **rules)
        full, cost = n * c * kh * kw, tucker2_cost(layer, r_in, r_out)
        what = f"Tucker-2 ranks ({r_in}, {r_out})"
        return (tucker2_split(layer, (r_in, r_out)) if cost < full else None), (
            f"{what}: {int(cost)} vs {full} params"
        )
    if isinstance(layer, nn.Linear):
        m, n = layer.out_features, layer.in_features
        limit, full, shape = min(m, n), m * n, f"Linear {n}→{m}"
        values, cost = None, linear_rank_cost(m, n)
    else:
        assert isinstance(layer, nn.Conv2d)
        n, c, kh, kw = layer.weight.shape
        full, shape = n * c * kh * kw, f"Conv2d {c}→{n} {kh}×{kw}"
        if cfg.method == "spatial":
            limit, cost = min(c * kh, n * kw), spatial_cost(layer)
        else:
            limit = min(n, c * kh * kw)
            cost = linear_rank_cost(n, c * kh * kw)
    _fixed_rank_fits(name, cfg.rank, limit, shape)
    extra = math.ceil(cfg.sparse_fraction * full) if cfg.method == "lowrank_sparse" else 0
    if cfg.method == "spatial":
        values = spatial_singular_values(layer)  # type: ignore[arg-type]
    elif isinstance(layer, nn.Linear):
        values = torch.linalg.svdvals(_effective_weight(layer).double())
    else:
        values = unfolded_singular_values(layer)  # type: ignore[arg-type]
    budget = (lambda r: cost(r) + extra) if extra else cost
    r = choose_rank(values, budget, full_cost=full, **rules)
    total = budget(r)
    desc = f"rank {r}: {int(total)} vs {full} {'non-zeros' if extra else 'params'}"
    if total >= full:
        return None, desc
    if cfg.method == "svd":
        return svd_split(layer, r), desc  # type: ignore[arg-type]
    if cfg.method == "spatial":
        return spatial_svd_split(layer, r), desc  # type: ignore[arg-type]
    if isinstance(layer, nn.Linear):
        return lowrank_sparse_split(layer, r, extra, cfg.iterations), desc
    return conv_lowrank_sparse_split(layer, r, extra, cfg.iterations), desc  # type: ignore[arg-type]


def _plan_cp(layer: nn.Module, cfg: Factorize) -> tuple[nn.Module | None, str]:
    assert isinstance(layer, nn.Conv2d)
    if cfg.energy is not None:
        raise ConfigError(
            "factorize: method 'cp' has no singular values to keep a fraction of; give rank "
            "(e.g. 16) or ratio (e.g. 0.25) instead of energy"
        )
    n, c, kh, kw = layer.weight.shape
    r = cfg.rank if cfg.rank is not None else cp_rank_for_ratio(layer, cfg.ratio or 1.0)
    full, cost = n * c * kh * kw, cp_cost(layer, r)
    if cost >= full:
        return None, f"CP rank {r}: {int(cost)} vs {full} params"
    chain = cp_split(layer, r, max(cfg.iterations, 25))
    return chain, f"CP rank {r}: {int(cost)} vs {full} params, kernel error {chain.cp_error:.3f}"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def factorize_(
    model: nn.Module, config: Factorize, context: StageContext | None = None
) -> nn.Module:
    """Factorize ``model``'s targeted layers in place; skipped layers are noted in ``context``."""
    notes: list[str] = []
    done = []
    for name, layer in _layers(model, config, notes):
        new, desc = _plan(name, layer, config)
        if new is None:
            notes.append(
                f"factorize: skipped {name!r} ({config.method}, {desc}): the factorized layer "
                "would not be smaller"
            )
            continue
        _replace(model, name, new)
        done.append(f"{name} ({desc})")
    if done:
        notes.append(f"factorize ({config.method}): " + "; ".join(done))
    if context is not None:
        for note in notes:
            context.note(note)
    model.dwindle_factorization_notes = notes
    return model


@register_technique(
    "factorize",
    Factorize,
    "low-rank factorization: SVD, spatial SVD, Tucker-2, CP, low rank + sparse",
)
def _factorize_stage(model: nn.Module, config: Factorize, context: StageContext) -> nn.Module:
    return factorize_(model, config, context)
