"""The search section of a recipe: a validated search space, objectives and study settings.

A search space maps a dotted path into the recipe to a distribution::

    search:
      kind: hpo                       # hpo | joint | nas | autotune
      n_trials: 20
      sampler: tpe                    # random | tpe | gp | cmaes | nsga2 | motpe
      pruner: hyperband               # none | median | halving | hyperband
      objectives: [accuracy]          # accuracy, bytes, latency, energy, flops, params
      space:
        baseline.train.lr: {low: 1.0e-3, high: 0.3, log: true}
        baseline.train.batch_size: {choices: [32, 64, 128]}
        model.args.dropout: {low: 0.0, high: 0.5}
        stages.0.prune.ratio: {low: 0.5, high: 0.95}
        stages.1.enabled: {choices: [true, false]}     # a stage on or off
        distill: {choices: [true, false]}              # recovery by distillation on or off

A trial's recipe is the recipe with every path set to the trial's value, so any trial (e.g.
a Pareto front member) exports as a plain recipe that ``dwindle run`` accepts.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dwindle.config import Config
from dwindle.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "Budget",
    "Constraint",
    "ParamSpec",
    "SearchSpec",
    "apply_params",
    "distributions",
]

# objective name -> optimisation direction
DIRECTIONS: dict[str, str] = {
    "accuracy": "maximize",
    "bytes": "minimize",
    "latency": "minimize",
    "energy": "minimize",
    "flops": "minimize",
    "params": "minimize",
}
SPECIAL_PATHS = ("distill",)


class ParamSpec(Config):
    """One dimension: ``low``/``high`` (float or int, optional ``log``/``step``) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    type: Literal["float", "int", "categorical"] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty; list at least one value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices: [...])")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high}); swap them")
        if self.log and self.low <= 0:
            raise ValueError(
                f"log scale needs positive bounds (got low={self.low}); raise low above 0 "
                "or set log: false"
            )
        if self.log and self.step is not None:
            raise ValueError("step cannot be combined with log: true; drop one of them")
        if self.type == "categorical":
            raise ValueError("type categorical needs choices: [...]")
        return self

    @property
    def kind(self) -> str:
        """categorical, int (bounds written as integers, or ``type: int``) or float."""
        if self.choices is not None:
            return "categorical"
        return self.type or "float"

    @property
    def encoded(self) -> bool:
        """Choices that are lists or mappings (e.g. layer widths) are stored as JSON strings."""
        return any(isinstance(c, (list, tuple, dict)) for c in self.choices or [])

    def storable_choices(self) -> list[Any]:
        import json

        return (
            [json.dumps(c) for c in self.choices or []]
            if self.encoded
            else list(self.choices or [])
        )

    def decode(self, value: Any) -> Any:
        import json

        return json.loads(value) if self.encoded and isinstance(value, str) else value

    def default(self) -> Any:
        """A valid value of this dimension (used to check paths before any trial runs)."""
        if self.choices is not None:
            return self.choices[0]
        assert self.low is not None
        return int(self.low) if self.kind == "int" else float(self.low)


class Budget(Config):
    """Hard limits a NAS candidate must meet before it is trained."""

    params: int | None = Field(None, ge=1)
    latency_ms: float | None = Field(None, gt=0)
    flops: int | None = Field(None, ge=1)


class Constraint(Config):
    """Accuracy constraint of ``autotune``: at most ``max_drop`` points (0–100) below baseline."""

    max_drop: float = Field(ge=0, le=100)


class SearchSpec(Config):
    """What to search, how, and where the study lives; see the module docstring."""

    kind: Literal["hpo", "joint", "nas", "autotune"] = "hpo"
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    n_trials: int = 20
    sampler: Literal["random", "tpe", "gp", "cmaes", "nsga2", "motpe"] | None = None
    pruner: Literal["none", "median", "halving", "hyperband"] = "none"
    objectives: list[str] = Field(default_factory=lambda: ["accuracy"])
    seed: int = Field(0, ge=0)
    study: str | None = None
    storage: str | None = None
    heartbeat: int = Field(10, ge=1)
    retries: int = Field(3, ge=0)
    budget: Budget | None = None
    constraint: Constraint | None = None
    retrain: bool = True
    latency_batch: int = Field(1, ge=1)
    latency_runs: int = Field(10, ge=1)
    energy: Literal["auto", "nvml", "rapl", "codecarbon", "estimate"] = "estimate"

    @field_validator("space", mode="before")
    @classmethod
    def _ints_kept(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        out = {}
        for path, spec in raw.items():
            if isinstance(spec, dict):
                spec = dict(spec)
                if "type" not in spec and "choices" not in spec:
                    bounds = [spec.get(k) for k in ("low", "high")]
                    if all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
                        spec["type"] = "int"
            out[path] = spec
        return out

    @field_validator("objectives")
    @classmethod
    def _known_objectives(cls, objectives: list[str]) -> list[str]:
        if not objectives:
            raise ValueError(f"give at least one objective ({', '.join(DIRECTIONS)})")
        for name in objectives:
            if name not in DIRECTIONS:
                near = difflib.get_close_matches(name, list(DIRECTIONS), n=1, cutoff=0.5)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ValueError(
                    f"unknown objective {name!r}{hint} (known: {', '.join(DIRECTIONS)})"
                )
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"objectives repeat a name: {objectives}")
        return objectives

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.n_trials <= 0:
            raise ValueError(f"n_trials must be a positive number of trials (got {self.n_trials})")
        if not self.space:
            raise ValueError(
                "the search space is empty; add at least one dimension under search.space, "
                "e.g. 'baseline.train.lr: {low: 0.001, high: 0.3, log: true}'"
            )
        multi = len(self.objectives) > 1
        if multi and self.sampler in ("gp", "cmaes"):
            raise ValueError(
                f"sampler {self.sampler!r} optimises one objective; with several objectives use "
                "nsga2, motpe or random"
            )
        if multi and self.pruner != "none":
            raise ValueError("pruners work on one objective only; set pruner: none")
        if self.kind == "autotune" and self.constraint is None:
            raise ValueError("kind autotune needs constraint: {max_drop: <accuracy points>}")
        if self.kind == "autotune" and "accuracy" in self.objectives:
            raise ValueError(
                "autotune minimises size/speed objectives under the accuracy constraint; "
                "list e.g. objectives: [bytes] (accuracy is the constraint)"
            )
        return self

    @property
    def directions(self) -> list[str]:
        return [DIRECTIONS[o] for o in self.objectives]

    @property
    def sampler_name(self) -> str:
        if self.sampler is not None:
            return self.sampler
        return "nsga2" if len(self.objectives) > 1 else "tpe"


def distributions(spec: SearchSpec) -> dict[str, Any]:
    """Optuna distributions of the search space, keyed by path."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for path, p in spec.space.items():
        if p.kind == "categorical":
            out[path] = od.CategoricalDistribution(p.storable_choices())
        elif p.kind == "int":
            assert p.low is not None and p.high is not None
            out[path] = od.IntDistribution(
                int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
            )
        else:
            assert p.low is not None and p.high is not None
            out[path] = od.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def _set(node: Any, parts: list[str], value: Any, path: str) -> None:
    key = parts[0]
    last = len(parts) == 1
    if isinstance(node, list):
        if not key.isdigit() or int(key) >= len(node):
            raise ConfigError(
                f"search.space: {path!r}: {key!r} is not an index of a list of {len(node)} "
                "items in the recipe"
            )
        if last:
            node[int(key)] = value
        else:
            _set(node[int(key)], parts[1:], value, path)
        return
    if not isinstance(node, dict):
        raise ConfigError(
            f"search.space: {path!r}: the recipe has a plain value at {key!r}, not a mapping"
        )
    if last:
        node[key] = value
        return
    if key not in node or node[key] is None:
        node[key] = {}
    _set(node[key], parts[1:], value, path)


def apply_params(recipe: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``recipe`` (a plain dict without ``search``) with every path set to its value.

    ``stages.N.enabled: false`` drops stage N; ``distill: true`` adds recovery by
    distillation from the baseline to every stage that fine-tunes.
    """
    doc = copy.deepcopy(recipe)
    drop: set[int] = set()
    distill = None
    for path, value in params.items():
        parts = path.split(".")
        if path == "distill":
            distill = bool(value)
            continue
        if len(parts) == 3 and parts[0] == "stages" and parts[2] == "enabled":
            if not parts[1].isdigit() or int(parts[1]) >= len(doc.get("stages", [])):
                raise ConfigError(f"search.space: {path!r}: the recipe has no stage {parts[1]}")
            if not value:
                drop.add(int(parts[1]))
            continue
        if parts[0] not in ("model", "data", "baseline", "stages", "measure", "seed"):
            raise ConfigError(
                f"search.space: {path!r} does not start with model, data, baseline or stages "
                "(or is 'distill')"
            )
        _set(doc, parts, _plain(value), path)
    stages = doc.get("stages", [])
    if distill is not None:
        for stage in stages:
            if distill and stage.get("finetune") is not None:
                stage.setdefault("recover", {"distill": {}})
            elif not distill:
                stage.pop("recover", None)
    if drop:
        kept = [s for i, s in enumerate(stages) if i not in drop]
        names = {s.get("name") for i, s in enumerate(stages) if i in drop}
        for stage in kept:  # a stage branching from a dropped one starts from the last kept
            if stage.get("from") in names:
                stage.pop("from")
        doc["stages"] = kept
    return doc


def _plain(value: Any) -> Any:
    """Optuna returns numpy scalars for some samplers; recipes want plain Python values."""
    return value.item() if hasattr(value, "item") else value
