"""``dwindle search recipe.yaml`` / ``dw.search(...)``: run (or join, or resume) a study.

The search recipe is a plain recipe plus a ``search:`` section (see :mod:`dwindle.search.space`).
The run directory holds the SQLite study (unless a storage URL is given), the trials table,
plots, the report, the best / Pareto-front recipes, and the best model retrained with
``dwindle run`` machinery.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dwindle._imports import require
from dwindle.errors import ConfigError
from dwindle.export import ensure_dir
from dwindle.recipe import load_recipe, read_yaml_mapping
from dwindle.search.space import SearchSpec, apply_params
from dwindle.search.storage import SearchError, default_url, mask_url, open_storage
from dwindle.search.study import (
    build_pruner,
    build_sampler,
    open_study,
    requeue_interrupted,
    run_worker,
)
from dwindle.search.trials import Evaluator

__all__ = ["SearchResult", "load_search_recipe", "search"]


@dataclass
class SearchResult:
    """A finished study: where it lives, its trials, the chosen ones and the files written."""

    out_dir: Path
    study: Any
    spec: SearchSpec
    evaluator: Evaluator
    summary: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.summary.get("best", {}).get("params", {}))

    def recipe(self, trial_number: int) -> dict[str, Any]:
        """The runnable recipe (a plain dict ``dwindle run`` accepts) of one trial."""
        trial = self.study.get_trials(deepcopy=False)[trial_number]
        return self.evaluator.recipe_doc(trial.params)

    def export_recipe(self, trial_number: int, path: str | Path) -> Path:
        """Write one trial's recipe as YAML (e.g. a Pareto front member)."""
        from dwindle.export import atomic_write_bytes

        doc = self.recipe(trial_number)
        doc["name"] = f"{doc.get('name', 'run')}-trial{trial_number}"
        return atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())


def load_search_recipe(
    source: str | os.PathLike[str] | dict[str, Any],
) -> tuple[dict[str, Any], str | None, SearchSpec]:
    """Split a search recipe into (plain recipe dict, its directory, validated SearchSpec).

    Every path of the space is checked against the recipe before any trial runs.
    """
    if isinstance(source, dict):
        doc, base_dir = dict(source), source.get("base_dir")
    else:
        path = Path(source)
        doc = read_yaml_mapping(path, "search recipe")
        base_dir = str(path.resolve().parent)
    if "search" not in doc:
        raise ConfigError(
            "the recipe has no 'search:' section; add one with a search space, e.g.\n"
            "search: {space: {baseline.train.lr: {low: 0.001, high: 0.3, log: true}}}"
        )
    raw = doc.pop("search")
    doc.pop("base_dir", None)
    spec = SearchSpec.from_dict(raw, "recipe.search")
    # every dimension at its first value must give a valid recipe
    defaults = {p: s.default() for p, s in spec.space.items()}
    for path, value in defaults.items():
        checked = apply_params(doc, {path: value})
        checked["base_dir"] = base_dir
        try:
            load_recipe(checked)
        except ConfigError as exc:
            raise ConfigError(f"search.space: {path!r} does not fit the recipe: {exc}") from None
    has_teacher = bool((doc.get("model") or {}).get("weights")) or bool(
        (doc.get("baseline") or {}).get("train")
    )
    if spec.kind in ("hpo", "nas") and "distill" in spec.space and not has_teacher:
        raise ConfigError(
            "search.space.distill: the teacher is the recipe's own model, which has neither "
            "weights (model.weights) nor training (baseline.train); give it one of them"
        )
    if spec.kind in ("joint", "autotune") and not doc.get("stages"):
        raise ConfigError(f"search.kind {spec.kind}: the recipe has no stages to search over")
    if spec.kind in ("joint", "autotune") and any(p.startswith("model.") for p in spec.space):
        raise ConfigError(
            f"search.kind {spec.kind} compresses one baseline; model.* dimensions belong to "
            "kind nas or hpo"
        )
    return doc, base_dir, spec


def search(
    recipe: str | os.PathLike[str] | dict[str, Any],
    out_dir: str | Path | None = None,
    *,
    storage: str | None = None,
    resume: bool = False,
    n_trials: int | None = None,
    study_name: str | None = None,
    report: bool = True,
) -> SearchResult:
    """Run the search a recipe describes; see :mod:`dwindle.search`.

    ``storage``: a database URL (e.g. ``postgresql://user:pw@host/db``) makes this process one
    worker of a shared study; default is ``study.db`` (SQLite) in the run directory.
    ``resume``: continue a stopped study (its finished trials count towards ``n_trials``;
    trials of a killed run are re-queued once their heartbeat is stale).
    """
    optuna = require("optuna", "search", "dwindle search")
    optuna.logging.set_verbosity(logging.ERROR)  # failed trials keep their error
    doc, base_dir, spec = load_search_recipe(recipe)
    if n_trials is not None:
        spec = SearchSpec.from_dict({**spec.model_dump(), "n_trials": n_trials}, "n_trials")
    url = storage or spec.storage
    if url is not None:
        _check_storage_url(url)
    out = (
        Path(out_dir) if out_dir is not None else Path("runs") / f"{doc.get('name', 'run')}-search"
    )
    ensure_dir(out)
    name = study_name or spec.study or str(doc.get("name", "run"))
    shared = url is not None
    url = url or default_url(out)
    store = open_storage(url, heartbeat=spec.heartbeat, retries=spec.retries)
    evaluator = Evaluator(doc, base_dir, spec, out)
    sampler = build_sampler(spec.sampler_name, spec.seed, startup=_startup(spec))
    epochs = (doc.get("baseline") or {}).get("train", {}) or {}
    pruner = build_pruner(spec.pruner, epochs.get("epochs") if isinstance(epochs, dict) else None)
    must_exist = True if resume else (None if shared else False)
    study = open_study(spec, store, name, sampler=sampler, pruner=pruner, must_exist=must_exist)
    study.set_user_attr("objectives", spec.objectives)
    study.set_user_attr("kind", spec.kind)
    if resume:
        requeue_interrupted(study)
    elif not study.get_trials(deepcopy=False):
        _seed_trials(study, spec, evaluator)
    run_worker(study, evaluator, spec.n_trials, poll=min(1.0, spec.heartbeat / 2))
    result = SearchResult(out_dir=out, study=study, spec=spec, evaluator=evaluator)
    if report:
        from dwindle.search.finish import finish

        finish(result)
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    result.summary.setdefault("states", {s: states.count(s) for s in sorted(set(states))})
    result.summary.setdefault("storage", mask_url(url))
    return result


def _startup(spec: SearchSpec) -> int | None:
    # model-based samplers start after a few random trials; on tiny budgets a third of them
    if spec.sampler_name in ("tpe", "motpe", "gp", "cmaes", "nsga2"):
        return max(2, min(10, spec.n_trials // 3))
    return None


def _seed_trials(study: Any, spec: SearchSpec, evaluator: Evaluator) -> None:
    """Enqueue sensitivity-derived starting points (autotune), before any sampled trial."""
    if spec.kind != "autotune" or spec.constraint is None:
        return
    from dwindle.search.autotune import seed_from_sensitivity

    for params in seed_from_sensitivity(evaluator):
        study.enqueue_trial(params, skip_if_exists=True)


def _check_storage_url(url: str) -> None:
    if "://" not in url:
        raise SearchError(
            f"storage {mask_url(url)!r} is not a database URL; use sqlite:///path/study.db or "
            "postgresql://user:password@host:port/database"
        )
