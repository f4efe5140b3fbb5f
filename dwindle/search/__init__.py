"""Search: hyper-parameter optimisation, sensitivity, NAS and joint multi-objective compression.

Built on Optuna (extra ``search``). A search recipe is a recipe plus a ``search:`` section
(:mod:`dwindle.search.space`); ``dwindle search recipe.yaml`` or :func:`search` runs it, on one
machine (SQLite file in the run directory) or as one of many workers of a PostgreSQL study.
"""

import sys
import types
from typing import Any

from dwindle.search.autotune import seed_from_sensitivity
from dwindle.search.finish import pareto_front, trial_rows
from dwindle.search.postgres import postgres_unavailable_reason, throwaway_postgres
from dwindle.search.report import (
    best_so_far,
    plot_best_so_far,
    plot_history,
    plot_importances,
    plot_pareto,
)
from dwindle.search.runner import SearchResult, load_search_recipe, search
from dwindle.search.sensitivity import Sensitivity, layer_sensitivity, recipe_sensitivity
from dwindle.search.space import Budget, Constraint, ParamSpec, SearchSpec, apply_params
from dwindle.search.storage import SearchError, default_url, mask_url, open_storage
from dwindle.search.study import build_pruner, build_sampler, open_study, run_worker
from dwindle.search.trials import Evaluator, measure_objectives

__all__ = [
    "Budget",
    "Constraint",
    "Evaluator",
    "ParamSpec",
    "SearchError",
    "SearchResult",
    "SearchSpec",
    "Sensitivity",
    "apply_params",
    "best_so_far",
    "build_pruner",
    "build_sampler",
    "default_url",
    "layer_sensitivity",
    "load_search_recipe",
    "mask_url",
    "measure_objectives",
    "open_storage",
    "open_study",
    "pareto_front",
    "plot_best_so_far",
    "plot_history",
    "plot_importances",
    "plot_pareto",
    "postgres_unavailable_reason",
    "recipe_sensitivity",
    "run_worker",
    "search",
    "seed_from_sensitivity",
    "throwaway_postgres",
    "trial_rows",
]


class _CallableModule(types.ModuleType):
    """``dw.search("recipe.yaml")`` runs a search; ``dw.search.layer_sensitivity`` etc. work too."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
