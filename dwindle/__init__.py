"""dwindle: make trained PyTorch models smaller, faster and cheaper to run, and prove it.

Imports are lazy so ``import dwindle`` stays fast; each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from dwindle._version import __version__

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Config": "dwindle.config",
    "StageContext": "dwindle.config",
    "apply": "dwindle.config",
    "register_technique": "dwindle.config",
    "techniques": "dwindle.config",
    "Precision": "dwindle.precision",
    "cast_": "dwindle.precision",
    "Prune": "dwindle.pruning",
    "prune_": "dwindle.pruning",
    "FilterPruning": "dwindle.pruning",
    "prune_filters_": "dwindle.pruning",
    "NeuronPruning": "dwindle.pruning",
    "prune_neurons_": "dwindle.pruning",
    "LayerPruning": "dwindle.pruning",
    "prune_layers_": "dwindle.pruning",
    "StageWidthPruning": "dwindle.pruning",
    "prune_stage_widths_": "dwindle.pruning",
    "Int8Static": "dwindle.quantization",
    "Int8Dynamic": "dwindle.quantization",
    "PTQ": "dwindle.quantization",
    "QAT": "dwindle.quantization",
    "qat": "dwindle.quantization",
    "LowBit": "dwindle.quantization",
    "quantize_weights_": "dwindle.quantization",
    "DistillConfig": "dwindle.distillation",
    "distill": "dwindle.distillation",
    "Factorize": "dwindle.factorization",
    "factorize_": "dwindle.factorization",
    "Share": "dwindle.sharing",
    "share_": "dwindle.sharing",
    "Encode": "dwindle.sharing",
    "encode_": "dwindle.sharing",
    "TrainConfig": "dwindle.training",
    "Callback": "dwindle.training",
    "train": "dwindle.training",
    "finetune": "dwindle.training",
    "evaluate": "dwindle.training",
    "MeasureConfig": "dwindle.metrics",
    "Report": "dwindle.metrics",
    "measure": "dwindle.metrics",
    "compare": "dwindle.metrics",
    "Recipe": "dwindle.recipe",
    "load_recipe": "dwindle.recipe",
    "run_recipe": "dwindle.pipeline",
    "RunResult": "dwindle.pipeline",
    "DwindleError": "dwindle.errors",
    "ConfigError": "dwindle.errors",
}
# public sub-modules reachable as attributes: dw.data.load(...), dw.zoo.create(...). No
# sub-module shares a name with a function above: importing it would shadow the function.
_SUBMODULES: dict[str, str] = {
    "data": "dwindle.data",
    "zoo": "dwindle.models",
    "models": "dwindle.models",
    "export": "dwindle.export",
    "report": "dwindle.report",
    "precision": "dwindle.precision",
    "pruning": "dwindle.pruning",
    "quantization": "dwindle.quantization",
    "distillation": "dwindle.distillation",
    "factorization": "dwindle.factorization",
    "sharing": "dwindle.sharing",
    "metrics": "dwindle.metrics",
    "training": "dwindle.training",
    "search": "dwindle.search",  # callable: dw.search("recipe.yaml") runs a search
    "nlp": "dwindle.nlp",
}

__all__ = ["__version__", *sorted(_LAZY), "quantize", *sorted(_SUBMODULES)]


# names whose defining module spells them differently
_ALIASES: dict[str, tuple[str, str]] = {
    "quantize": ("dwindle.quantization.ptq", "quantize"),  # dw.quantize(model, Int8Static())
}


def __getattr__(name: str) -> Any:
    if name in _ALIASES:
        module, attr = _ALIASES[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(_SUBMODULES[name])
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dwindle' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
