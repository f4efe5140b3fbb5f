"""Accuracy-aware auto-tuning: the smallest / fastest model within X points of the baseline.

The study minimises the size or speed objectives with the accuracy floor as an Optuna
constraint (so the samplers prefer feasible trials). Sensitivity seeds it: the first trial
prunes each layer as far as its one-layer scan allows. When no trial meets the floor, the
fallback takes the closest trial and keeps layers uncompressed one by one, most sensitive
first, until the floor is met. If even that fails the outcome says so, with the closest
trials; a violating model is never handed back as if it were fine.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass, field
from typing import Any

from dwindle.config import get_technique
from dwindle.errors import DwindleError
from dwindle.targets import matches

__all__ = ["Outcome", "resolve", "seed_from_sensitivity", "targeted_layers"]

_STAGE_OPTIONS = ("name", "finetune", "from", "recover")


@dataclass
class Outcome:
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    recipe: dict[str, Any] | None = None


def _technique(stage: dict[str, Any]) -> str:
    return next(k for k in stage if k not in _STAGE_OPTIONS)


def _literal(patterns: list[str]) -> bool:
    return all(not any(c in p for c in "*?[") and not p.startswith("re:") for p in patterns)


def seed_from_sensitivity(ev: Any) -> list[dict[str, Any]]:
    """One starting trial: every ``stages.N.prune.ratio`` at its layers' largest safe ratio."""
    from dwindle.search.sensitivity import layer_sensitivity

    spec = ev.spec
    dims = {
        p: s
        for p, s in spec.space.items()
        if p.startswith("stages.") and p.endswith(".prune.ratio") and s.choices is None
    }
    if not dims or spec.constraint is None:
        return []
    model, data, _ = ev.baseline()
    grid = sorted({round(x / 20, 2) for x in range(1, 20)})
    sens = layer_sensitivity(model, data, techniques=("prune",), ratios=grid)
    allowed = spec.constraint.max_drop / 100
    params: dict[str, Any] = {}
    for path, dim in dims.items():
        stage = ev.base["stages"][int(path.split(".")[1])]
        targets = list(stage["prune"].get("targets") or ["*"])
        layers = (
            [n for n in sens.layers if any(fnmatch.fnmatchcase(n, t) for t in targets)]
            if not _literal(targets)
            else [t for t in targets if t in sens.layers]
        )
        if not layers:
            continue
        ratio = min(sens.max_ratio(n, allowed) for n in layers)
        assert dim.low is not None and dim.high is not None
        params[path] = float(min(max(ratio, dim.low), dim.high))
    return [params] if params else []


def _without(doc: dict[str, Any], keep: list[str]) -> dict[str, Any]:
    """``doc`` with the layers in ``keep`` excluded from every stage that targets layers."""
    out = copy.deepcopy(doc)
    stages = []
    for stage in out.get("stages", []):
        name = _technique(stage)
        cfg = stage[name] if isinstance(stage[name], dict) else {}
        if "exclude" not in get_technique(name).config.model_fields:
            stages.append(stage)
            continue
        targets = list(cfg.get("targets") or ["*"])
        if _literal(targets) and set(targets) <= set(keep):
            continue  # every layer of this stage is kept as it is: drop the stage
        cfg = dict(cfg)
        cfg["exclude"] = sorted(set(cfg.get("exclude") or []) | set(keep))
        stage[name] = cfg
        stages.append(stage)
    out["stages"] = stages
    return out


def targeted_layers(doc: dict[str, Any], names: list[str]) -> list[str]:
    """Those of ``names`` (in order) that a layer-targeting stage of ``doc`` compresses; only
    these can be kept uncompressed by :func:`_without`."""
    out = []
    for n in names:
        for stage in doc.get("stages", []):
            name = _technique(stage)
            if "exclude" not in get_technique(name).config.model_fields:
                continue
            cfg = stage[name] if isinstance(stage[name], dict) else {}
            targets = list(cfg.get("targets") or ["*"])
            if matches(n, targets) and not matches(n, list(cfg.get("exclude") or [])):
                out.append(n)
                break
    return out


def _closest(rows: list[dict[str, Any]], n: int = 3) -> list[dict[str, Any]]:
    done = [r for r in rows if r["state"] == "complete" and r.get("constraint_violation")]
    return sorted(done, key=lambda r: r["constraint_violation"])[:n]


def resolve(ev: Any, rows: list[dict[str, Any]], best: dict[str, Any] | None) -> Outcome:
    """The autotune answer: best feasible trial, else the layer-by-layer fallback, else none."""
    from dwindle.search.sensitivity import layer_sensitivity
    from dwindle.search.trials import measure_objectives

    spec = ev.spec
    assert spec.constraint is not None
    model, data, base_acc = ev.baseline()
    floor = base_acc - spec.constraint.max_drop / 100
    out = Outcome()
    if best is not None:
        out.summary.update(
            constraint_met=True, chosen={"trial": best["number"], "accuracy": best["accuracy"]}
        )
        out.recipe = ev.recipe_doc(best["params_"])
        out.notes.append(
            f"trial {best['number']} meets the constraint: accuracy "
            f"{best['accuracy']:.4f} >= {floor:.4f}"
        )
        return out
    closest = _closest(rows)
    out.summary["closest"] = closest
    if not closest:
        out.summary["constraint_met"] = False
        out.notes.append("no trial completed; nothing meets the constraint")
        return out
    start = ev.recipe_doc(closest[0]["params_"])
    out.notes.append(
        f"no trial meets accuracy >= {floor:.4f}; closest is trial {closest[0]['number']} "
        f"({closest[0]['accuracy']:.4f}); falling back layer by layer from it"
    )
    ranking = layer_sensitivity(model, data, techniques=("prune", "bits")).ranking()
    ranking = targeted_layers(start, ranking)  # a layer no stage touches has nothing to give
    steps = []
    for k in range(1, len(ranking) + 1):
        keep = ranking[:k]
        doc = _without(start, keep)
        try:
            recipe = _load(doc, ev.base_dir)
            compressed, _ = ev.compress(recipe)
            metrics = measure_objectives(compressed, data, spec)
        except DwindleError as exc:
            steps.append({"kept": keep, "error": str(exc)})
            continue
        steps.append(
            {
                "kept": keep,
                "accuracy": metrics["accuracy"],
                **{o: metrics[o] for o in spec.objectives},
            }
        )
        if metrics["accuracy"] >= floor:
            out.summary.update(
                constraint_met=True,
                chosen={
                    "fallback_from": closest[0]["number"],
                    "kept_layers": keep,
                    **{k: v for k, v in steps[-1].items() if k != "kept"},
                },
            )
            out.summary["fallback"] = steps
            out.recipe = doc
            out.notes.append(
                f"fallback meets the constraint keeping {', '.join(keep)} "
                f"uncompressed: accuracy {metrics['accuracy']:.4f}"
            )
            return out
    out.summary.update(constraint_met=False, fallback=steps)
    out.notes.append(
        f"constraint NOT met: no trial, and no layer-by-layer fallback, reaches accuracy "
        f">= {floor:.4f}; see the closest trials. No model is returned as the answer."
    )
    return out


def _load(doc: dict[str, Any], base_dir: str | None) -> Any:
    from dwindle.recipe import load_recipe
    from dwindle.search.trials import silenced

    return load_recipe(dict(silenced(copy.deepcopy(doc)), base_dir=base_dir))
