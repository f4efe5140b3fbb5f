"""Turning a trial into a recipe, running it and scoring it on the chosen objectives.

Trials are built from the recipe machinery itself (``load_recipe``, ``build_model_and_data``,
``run_stage``), so a trial is exactly the recipe it exports. Objectives are measured on the
validation split; the test split is left for the final report.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from dwindle.config import StageContext
from dwindle.errors import DwindleError
from dwindle.recipe import Recipe, load_recipe
from dwindle.search.space import SearchSpec, apply_params
from dwindle.search.study import TrialFailed
from dwindle.training import Callback, TrainConfig, TrainState

__all__ = ["Evaluator", "measure_objectives", "objective_values", "silenced"]

_QUIET = Console(file=io.StringIO())


def measure_objectives(
    model: nn.Module, data: Any, spec: SearchSpec, split: str = "val"
) -> dict[str, Any]:
    """Accuracy, bytes, latency (ms, p50), energy, FLOPs and params of one model."""
    from dwindle.metrics import MeasureConfig, measure

    wants_energy = "energy" in spec.objectives
    cfg = MeasureConfig(
        batch_sizes=(spec.latency_batch,),
        runs=spec.latency_runs,
        warmup=2,
        energy=spec.energy if wants_energy else "off",
        energy_seconds=0.5,
        memory=False,
        split=split,
    )
    m = measure(model, data, config=cfg).rows[0]["metrics"]
    return {
        "accuracy": m["accuracy"],
        "bytes": m["bytes"],
        "artifact": m["artifact"],
        "latency": m["latency_ms"][f"b{spec.latency_batch}"]["p50"],
        "energy": m["energy_j"],
        "energy_source": m["energy_source"],
        "flops": m["flops"],
        "params": m["params"],
        "nonzeros": m["nonzeros"],
    }


def objective_values(metrics: dict[str, Any], spec: SearchSpec) -> list[float]:
    return [float(metrics[name]) for name in spec.objectives]


class _Report(Callback):
    """Feeds the trainer's per-epoch validation accuracy to the trial's pruner."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def on_epoch_end(self, state: TrainState) -> None:
        import optuna

        value = state.metrics.get("val_accuracy")
        if value is None or value != value:  # no validation split
            return
        self.trial.report(float(value), state.epoch)
        # after the last epoch the training is paid for: the trial completes with its value
        if state.epoch < state.config.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {state.epoch} (val {value:.4f})")


class Evaluator:
    """Evaluates trials of one search recipe; ``evaluator(trial)`` is the Optuna objective."""

    def __init__(
        self, base: dict[str, Any], base_dir: str | None, spec: SearchSpec, run_dir: Path
    ) -> None:
        self.base, self.base_dir, self.spec, self.run_dir = base, base_dir, spec, run_dir
        self._baseline: tuple[nn.Module, Any, float] | None = None

    # -- recipes ---------------------------------------------------------------------------
    def decoded(self, params: dict[str, Any]) -> dict[str, Any]:
        """Trial parameters as recipe values (list-valued choices are stored as JSON)."""
        space = self.spec.space
        return {k: space[k].decode(v) if k in space else v for k, v in params.items()}

    def recipe_doc(self, params: dict[str, Any]) -> dict[str, Any]:
        """The trial's recipe as a plain dict (what a front member exports)."""
        return apply_params(self.base, self.decoded(params))

    def recipe(self, params: dict[str, Any]) -> Recipe:
        doc = silenced(self.recipe_doc(params))
        doc["base_dir"] = self.base_dir
        return load_recipe(doc)

    def suggest(self, trial: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path, p in self.spec.space.items():
            if p.kind == "categorical":
                out[path] = trial.suggest_categorical(path, p.storable_choices())
            elif p.kind == "int":
                out[path] = trial.suggest_int(
                    path, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.log
                )
            else:
                out[path] = trial.suggest_float(
                    path, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log
                )
        return out

    # -- the baseline (for compression searches and distillation) ---------------------------
    def baseline(self) -> tuple[nn.Module, Any, float]:
        """The recipe's baseline (trained once, cached in the run directory), data, val acc."""
        if self._baseline is not None:
            return self._baseline
        from dwindle.export import atomic_write, load_weights
        from dwindle.pipeline import build_model_and_data
        from dwindle.training import evaluate, train

        recipe = self.recipe({})
        torch.manual_seed(recipe.seed)
        model, data = build_model_and_data(recipe)
        key = json.dumps(
            recipe.model_dump(mode="json", exclude={"stages", "search"}), sort_keys=True
        )
        cache = self.run_dir / "baseline.safetensors"
        stamp = self.run_dir / "baseline.json"
        if cache.exists() and stamp.exists() and stamp.read_text() == key:
            load_weights(model, cache)
        else:
            if recipe.baseline.train is not None:
                train(model, data, recipe.baseline.train)
            from safetensors.torch import save_file

            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            atomic_write(cache, lambda p: save_file(state, str(p)))
            atomic_write(stamp, lambda p: p.write_text(key))
        model.eval()
        acc = evaluate(model, data, "val")["accuracy"]
        self._baseline = (model, data, acc)
        return self._baseline

    # -- trials ----------------------------------------------------------------------------
    def __call__(self, trial: Any) -> list[float] | float:
        params = self.decoded(self.suggest(trial))
        try:
            recipe = self.recipe(params)
            if self.spec.kind in ("hpo", "nas"):
                model, data = self._train(recipe, params, trial)
            else:
                model, data = self.compress(recipe)
            metrics = measure_objectives(model, data, self.spec)
        except DwindleError as exc:
            raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
        trial.set_user_attr("metrics", metrics)
        if self.spec.constraint is not None:
            _, _, base_acc = self.baseline()
            floor = base_acc - self.spec.constraint.max_drop / 100
            trial.set_user_attr("baseline_accuracy", base_acc)
            violation = floor - metrics["accuracy"]  # <= 0: met
            trial.set_user_attr("constraint", violation)
            trial.set_constraint("accuracy_floor", violation)  # samplers prefer feasible trials
        values = objective_values(metrics, self.spec)
        return values[0] if len(values) == 1 else values

    def _train(self, recipe: Recipe, params: dict[str, Any], trial: Any) -> tuple[nn.Module, Any]:
        from dwindle.pipeline import build_model_and_data
        from dwindle.training import train

        torch.manual_seed(recipe.seed)
        model, data = build_model_and_data(recipe)
        if self.spec.budget is not None:
            self._check_budget(model, data, trial)
        cfg = recipe.baseline.train or TrainConfig(progress=False)
        callbacks = [_Report(trial)] if self.spec.pruner != "none" else []
        if params.get("distill"):
            from dwindle.distillation import recover_with_distillation

            teacher = self._teacher()
            recover_with_distillation(model, teacher, data, cfg, callbacks=callbacks)
        else:
            train(model, data, cfg, callbacks=callbacks)
        return model, data

    def _teacher(self) -> nn.Module:
        """The NAS teacher: the recipe's own model (given weights, or trained as its baseline)."""
        return copy.deepcopy(self.baseline()[0]).eval()

    def _check_budget(self, model: nn.Module, data: Any, trial: Any) -> None:
        import optuna

        from dwindle.metrics import count_flops, count_params, measure_latency

        budget = self.spec.budget
        assert budget is not None
        one = data.example_input(1)
        found: dict[str, float] = {"params": count_params(model)}
        if budget.flops is not None:
            found["flops"] = count_flops(model, one)
        if budget.latency_ms is not None:
            b = self.spec.latency_batch
            lat = measure_latency(
                {"m": model.eval()}, data.example_input, (b,), warmup=2, runs=self.spec.latency_runs
            )
            found["latency_ms"] = lat["m"][f"b{b}"]["p50"]
            model.train()
        over = {
            k: v
            for k, v in found.items()
            if getattr(budget, k) is not None and v > getattr(budget, k)
        }
        trial.set_user_attr("budget_check", found)
        if over:
            trial.set_user_attr("over_budget", over)
            raise optuna.TrialPruned(f"over budget: {over}")

    def compress(self, recipe: Recipe) -> tuple[nn.Module, Any]:
        """Apply ``recipe``'s stages to the (cached) baseline; the final model and the data."""
        from dwindle.pipeline import run_stage
        from dwindle.training import finetune

        baseline, data, _ = self.baseline()
        ctx = StageContext(
            data=data,
            baseline=baseline,
            out_dir=self.run_dir,
            finetune=lambda m, **kw: finetune(m, data, **kw),
        )
        models: dict[str, nn.Module] = {"baseline": baseline}
        current = baseline
        for stage in recipe.parsed_stages():
            torch.manual_seed(recipe.seed)
            start = models[stage.source] if stage.source is not None else current
            current = run_stage(stage, start, ctx, data, _QUIET)
            models[stage.label] = current
        if current is baseline:
            raise TrialFailed("no stage is enabled in this trial; nothing was compressed")
        return current, data


def silenced(doc: dict[str, Any]) -> dict[str, Any]:
    """Trials train without progress bars: set ``progress: false`` on every training config."""

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            if key in ("train", "finetune") and "progress" not in node:
                node["progress"] = False
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(doc)
    return doc
