"""Run a recipe: build model and data, train the baseline, apply stages, measure, report, export.

Each finished step is checkpointed in ``<out>/checkpoints`` and recorded in ``state.json``, so
``resume=True`` continues after an interruption without redoing finished stages. Stage
checkpoints are whole pickled modules (a stage may change the architecture, which a state dict
cannot describe); they are only ever read back from a run directory this code wrote, after
checking the SHA-256 recorded when they were written.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from dwindle.config import StageContext, apply
from dwindle.errors import (
    ConfigError,
    DwindleError,
    MissingExtraError,
)
from dwindle.export import ensure_dir
from dwindle.recipe import Recipe, Stage, load_recipe
from dwindle.run_dir import prepare_out_dir
from dwindle.run_state import RunState

__all__ = ["RunResult", "build_model_and_data", "run_recipe", "run_stage"]

BASELINE = "baseline"


@dataclass
class RunResult:
    """What a run produced: its directory, the report dict, written files and the models."""

    out_dir: Path
    report: dict[str, Any]
    files: dict[str, Path]
    models: dict[str, nn.Module] = field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model_and_data(recipe: Recipe) -> tuple[nn.Module, Any]:
    """The recipe's (untrained, or weight-loaded) model and its dataset."""
    from dwindle import data as data_mod
    from dwindle.models import build_model

    d = recipe.data
    if recipe.model.hf is not None:  # a text encoder, measured on STS-B
        from dwindle.nlp import load_encoder
        from dwindle.nlp.stages import sts_bundle

        if d.name != "stsb":
            raise ConfigError(
                f"recipe.data.name: a text encoder is measured on 'stsb', not {d.name!r}"
            )
        encoder = load_encoder(recipe.resolve(recipe.model.hf) or recipe.model.hf)
        if recipe.model.weights is not None:
            from dwindle.export import load_weights

            load_weights(encoder, recipe.resolve(recipe.model.weights) or recipe.model.weights)
        return encoder, sts_bundle(encoder, recipe.resolve(d.root), limit=d.limit)
    data = data_mod.load(
        d.name,
        recipe.resolve(d.root),
        seed=d.seed,
        val_size=d.val_size,
        limit=d.limit,
        normalize=d.normalize,
        **d.options,
    )
    args = dict(recipe.model.args)
    args.setdefault("num_classes", data.num_classes)
    if recipe.model.zoo is not None:  # every zoo model takes input_shape; user factories may not
        args.setdefault("input_shape", data.input_shape)
    model = build_model(
        recipe.resolve(recipe.model.spec) or recipe.model.spec,
        weights=recipe.resolve(recipe.model.weights),
        strip_prefix=recipe.model.strip_prefix,
        **args,
    )
    return model, data


def run_stage(
    stage: Stage, model: nn.Module, ctx: StageContext, data: Any, console: Console
) -> nn.Module:
    """Apply one stage to a copy of ``model``, then fine-tune (or recover by distillation)."""
    from dwindle.training import train

    console.print(f"[bold]stage[/bold] {stage.label}: {stage.technique}")
    out = apply(copy.deepcopy(model), stage.config, ctx)
    if stage.recover is not None:
        from dwindle.distillation import recover_with_distillation

        assert ctx.baseline is not None
        teacher = ctx.baseline.eval()  # a finished baseline; eval so its targets are clean
        recover_with_distillation(out, teacher, data, stage.finetune, stage.recover)
    elif stage.finetune is not None:
        train(out, data, stage.finetune)
    return out


def _check_devices(doc: Any, where: str = "recipe") -> None:
    """Every ``device`` the recipe names, anywhere in it, must exist on this machine."""
    from dwindle.training.evaluate import resolve_device

    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "device" and isinstance(value, str):
                try:
                    resolve_device(value)
                except ConfigError as exc:
                    raise ConfigError(f"{where}.device: {exc}") from None
            else:
                _check_devices(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            _check_devices(item, f"{where}[{i}]")


def run_recipe(
    recipe: Recipe | str | Path | dict[str, Any],
    out_dir: str | Path | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
) -> RunResult:
    """Run ``recipe`` end to end and write its run directory; see the module docstring."""
    from dwindle.metrics import compare
    from dwindle.report import write_report
    from dwindle.training import finetune, train

    console = console or Console()
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite starts it over: pass one")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    stages = recipe.parsed_stages()
    labels = [BASELINE, *(s.label for s in stages)]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"recipe.stages: stage names must be unique, got {labels}")
    out = Path(out_dir) if out_dir is not None else Path("runs") / recipe.name
    inputs = [recipe.resolve(recipe.model.weights), recipe.resolve(recipe.model.spec)]
    prepare_out_dir(
        out,
        resume=resume,
        overwrite=overwrite,
        inputs=[str(p).partition(":")[0] for p in inputs if p],
    )
    recipe_doc = recipe.model_dump(mode="json", exclude={"base_dir"})
    _check_devices(recipe_doc)  # before any training: a missing GPU must not cost a baseline
    state = RunState(out, recipe_doc, labels)
    if resume and (stale := state.load()):
        console.print(
            f"[bold]resume[/bold]: the recipe changed since {', '.join(stale)} ran; "
            "running those again (finished steps before the change are kept; the checkpoints "
            "of the changed ones are set aside in checkpoints/ and come back if the edit is "
            "undone)"
        )

    _seed_everything(recipe.seed)
    model, data = build_model_and_data(recipe)
    baseline = state.load_model(BASELINE)
    if baseline is None:
        if recipe.baseline.train is not None:
            console.print(f"[bold]baseline[/bold]: training {recipe.model.spec} on {data.name}")
            train(
                model,
                data,
                recipe.baseline.train,
                checkpoint_path=out / "baseline-last-good.safetensors",
            )
        state.save_model(BASELINE, model)
        baseline = model
    else:
        console.print("[bold]baseline[/bold]: restored from checkpoint")

    ctx = StageContext(
        data=data,
        baseline=baseline,
        out_dir=out,
        finetune=lambda m, **kw: finetune(m, data, **kw),
        resolve=recipe.resolve,
    )
    models: dict[str, nn.Module] = {BASELINE: baseline}
    current = baseline
    for stage in stages:
        restored = state.load_model(stage.label)
        if restored is not None:
            console.print(f"[bold]stage[/bold] {stage.label}: restored from checkpoint")
            current = restored
        else:
            _seed_everything(recipe.seed)
            start = models[stage.source] if stage.source is not None else current
            current = run_stage(stage, start, ctx, data, console)
            state.save_model(stage.label, current)
        models[stage.label] = current

    console.print(
        "[bold]measure[/bold]: accuracy, size, FLOPs, latency (interleaved), memory, energy"
    )
    report = compare(models, data, baseline=BASELINE, config=recipe.measure).to_dict()
    report["title"] = f"dwindle run: {recipe.name}"
    report["notes"] = [*report.get("notes", []), *ctx.notes]
    report["recipe"] = recipe_doc
    files = _export(recipe, models, current, data, out, report)
    files.update(write_report(report, out))
    return RunResult(out_dir=out, report=report, files=files, models=models)


def _export(
    recipe: Recipe,
    models: dict[str, nn.Module],
    final: nn.Module,
    data: Any,
    out: Path,
    report: dict[str, Any],
) -> dict[str, Path]:
    from dwindle import export

    files: dict[str, Path] = {}
    art_dir = ensure_dir(out / "artifacts")
    if "safetensors" in recipe.export:
        for label, model in models.items():
            fmt = export.default_format(model)
            files[f"artifact:{label}"] = export.save(model, art_dir / f"{label}.{fmt}", fmt)
    if "onnx" in recipe.export:
        from dwindle.export.onnx_io import check_onnx, export_onnx

        example = data.example_input(1)
        path = art_dir / "final.onnx"
        try:
            export_onnx(final, example, path)
            diff = check_onnx(path, final, example, atol=1e-2)
            report["notes"].append(
                f"ONNX export checked with onnxruntime: max |torch - ort| = {diff:.2e}"
            )
            files["onnx"] = path
        except MissingExtraError:
            raise
        except DwindleError as exc:
            report["notes"].append(f"ONNX export failed: {exc}")
    return files
