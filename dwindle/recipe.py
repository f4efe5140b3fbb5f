"""Recipes: one YAML file that says model → data → baseline → compression stages → measure → export.

```yaml
name: lenet300-fp16
model: {zoo: lenet300}                  # or {path: my_model.py:build, weights: ckpt.safetensors}
data: {name: mnist}
baseline: {train: {epochs: 10, lr: 0.1}}
stages:
  - precision: {dtype: fp16}
    finetune: {epochs: 1, lr: 0.01}     # optional, after the technique
  - prune: {method: magnitude, ratio: 0.9}
    from: baseline                      # optional: branch from an earlier stage, not the last
    finetune: {epochs: 2, lr: 0.01}
    recover: {distill: {temperature: 4, alpha: 0.9}}   # fine-tune with the baseline as teacher
measure: {batch_sizes: [1, 32]}
export: [safetensors, onnx]
```
Every key is validated; an unknown key is reported with its path and the nearest valid key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from dwindle.config import Config, format_loc, get_technique, validate_config
from dwindle.errors import ConfigError
from dwindle.metrics import MeasureConfig
from dwindle.training import TrainConfig

__all__ = [
    "BaselineSpec",
    "DataSpec",
    "ModelSpec",
    "Recipe",
    "Stage",
    "load_recipe",
    "read_yaml_mapping",
]


class ModelSpec(Config):
    """Where the model comes from: a zoo name or ``file.py:factory``, plus optional weights.

    ``strip_prefix``: a prefix the checkpoint's keys carry (DataParallel's ``module.`` is
    stripped without it).
    """

    zoo: str | None = None
    path: str | None = None
    hf: str | None = None  # a transformers / sentence-transformers folder, or "minilm"
    args: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    strip_prefix: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if sum(x is not None for x in (self.zoo, self.path, self.hf)) != 1:
            raise ValueError(
                "give exactly one of 'zoo' (a zoo model name, see `dwindle zoo list`), "
                "'path' (a 'file.py:factory' spec) or 'hf' (a Hugging Face model folder)"
            )
        return self

    @property
    def spec(self) -> str:
        return next(str(x) for x in (self.zoo, self.path, self.hf) if x is not None)


class DataSpec(Config):
    """Dataset name and loader options (see ``dwindle.data.load``)."""

    name: str = "digits"
    root: str | None = None
    seed: int = 0
    limit: int | None = Field(default=None, ge=1)
    val_size: int | float | None = None
    normalize: bool = True
    options: dict[str, Any] = Field(default_factory=dict)


class BaselineSpec(Config):
    """How to get the baseline: train it (``train``), or use the given weights as they are."""

    train: TrainConfig | None = None


class Recipe(Config):
    """A validated recipe. ``stages`` hold raw dicts; :meth:`parsed_stages` validates them."""

    # a plain folder name: runs go to runs/<name> by default
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    seed: int = Field(0, ge=0, lt=2**32)  # numpy's seed range
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    baseline: BaselineSpec = Field(default_factory=BaselineSpec)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    export: list[Literal["safetensors", "onnx"]] = Field(default_factory=lambda: ["safetensors"])
    base_dir: str | None = None  # directory relative paths are resolved against

    def parsed_stages(self) -> list[Stage]:
        stages: list[Stage] = []
        for i, raw in enumerate(self.stages):
            stage = _parse_stage(raw, i)
            known = ["baseline", *(s.label for s in stages)]
            if stage.source is not None and stage.source not in known:
                raise ConfigError(
                    f"recipe.stages[{i}].from: {stage.source!r} is not 'baseline' or the name of "
                    f"an earlier stage (known: {', '.join(known)})"
                )
            stages.append(stage)
        return stages

    def resolve(self, path: str | None) -> str | None:
        """Resolve a relative path against the recipe's directory when the file exists there."""
        if path is None or os.path.isabs(path) or self.base_dir is None:
            return path
        spec_file, _, factory = path.partition(":")
        candidate = Path(self.base_dir) / spec_file
        if candidate.exists():
            return str(candidate) + (f":{factory}" if factory else "")
        return path


_STAGE_OPTIONS = ("name", "finetune", "from", "recover")


@dataclass(frozen=True)
class Stage:
    """One parsed stage: the technique's config, a display label, optional fine-tuning.

    ``source``: the stage whose output this one starts from (None: the previous stage).
    ``recover``: distillation settings; fine-tuning then uses the baseline as teacher.
    """

    technique: str
    config: Config
    label: str
    finetune: TrainConfig | None = None
    source: str | None = None
    recover: Config | None = None


def _parse_stage(raw: Any, index: int) -> Stage:
    where = f"recipe.stages[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a stage is a mapping like '- precision: {{dtype: fp16}}'")
    keys = [k for k in raw if k not in _STAGE_OPTIONS]
    if len(keys) != 1:
        raise ConfigError(
            f"{where}: a stage names exactly one technique (found {keys or 'none'}); "
            f"other allowed keys are {', '.join(_STAGE_OPTIONS)}"
        )
    name = keys[0]
    try:
        tech = get_technique(name)
    except ConfigError as exc:
        raise ConfigError(f"{format_loc(where, [name])}: {exc}") from None
    config = validate_config(tech.config, raw[name], format_loc(where, [name]))
    finetune = None
    if raw.get("finetune") is not None:
        finetune = validate_config(TrainConfig, raw["finetune"], f"{where}.finetune")
    label = str(raw.get("name") or _default_label(name, config, index))
    source = raw.get("from")
    recover = _parse_recover(raw.get("recover"), f"{where}.recover")
    return Stage(name, config, label, finetune, None if source is None else str(source), recover)


def _parse_recover(raw: Any, where: str) -> Config | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"distill"}:
        raise ConfigError(
            f"{where}: expected {{distill: {{...}}}} (recovery by distillation from the "
            f"baseline), got {raw!r}"
        )
    from dwindle.distillation import DistillConfig

    return validate_config(DistillConfig, raw["distill"] or {}, f"{where}.distill")


def _default_label(name: str, config: Config, index: int) -> str:
    key = next(iter(v for k, v in config.to_dict().items() if k in ("dtype", "method")), None)
    return f"{index + 1}-{name}" + (f"-{key}" if key else "")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a key given twice in one mapping (plain YAML keeps the last,
    so ``{ratio: 0.5, ratio: 0.9}`` would silently mean 0.9)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                line = key_node.start_mark.line + 1
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {line}); keep one", None
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: Path, what: str = "recipe", hint: str = "") -> dict[str, Any]:
    """The YAML mapping in ``path``; a ConfigError naming ``what`` if missing, invalid or a
    non-mapping (``hint`` is appended to that last message, e.g. " with a 'model' key")."""
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist (cwd: {Path.cwd()})")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        message = str(exc).replace('"<unicode string>"', f'"{path}"')
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {message}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(path)!r} must be a YAML mapping{hint}")
    return data


def load_recipe(source: str | os.PathLike[str] | dict[str, Any]) -> Recipe:
    """Load and validate a recipe from a YAML file path or a dict; stages are checked too."""
    base_dir = None
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        data = read_yaml_mapping(path, "recipe", " with a 'model' key")
        base_dir = str(path.resolve().parent)
    data.setdefault("base_dir", base_dir)
    recipe = validate_config(Recipe, data, "recipe")
    recipe.parsed_stages()  # fail early on a bad stage, before any training starts
    return recipe
