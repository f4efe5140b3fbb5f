"""Per-layer sensitivity: accuracy when one layer alone is pruned, quantised or made low-rank.

Pruning reuses :func:`dwindle.pruning.sensitivity_scan`; bit widths use the quantisation
primitive (``make_weight_quantizer(...).dequantize``); ranks keep the top singular values of
the layer's weight (as ``svd_split`` would). The table ranks layers (the autotune fallback
keeps the most sensitive ones uncompressed first) and bounds per-layer search dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle.errors import ConfigError

__all__ = ["Sensitivity", "layer_sensitivity", "recipe_sensitivity"]

TECHNIQUES = ("prune", "bits", "rank")


@dataclass
class Sensitivity:
    """Rows ``{technique, layer, setting, accuracy, drop}``; ``baseline`` accuracy on the split."""

    baseline: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    def curve(self, technique: str, layer: str) -> list[tuple[float, float]]:
        return [
            (r["setting"], r["accuracy"])
            for r in self.rows
            if r["technique"] == technique and r["layer"] == layer
        ]

    def ranking(self) -> list[str]:
        """Layers, most sensitive first (largest mean accuracy drop over all settings)."""
        drops: dict[str, list[float]] = {}
        for r in self.rows:
            drops.setdefault(r["layer"], []).append(r["drop"])
        return sorted(drops, key=lambda n: -sum(drops[n]) / len(drops[n]))

    def max_ratio(self, layer: str, max_drop: float) -> float:
        """Largest scanned pruning ratio of ``layer`` losing at most ``max_drop`` (fraction)."""
        ok = [
            r["setting"]
            for r in self.rows
            if r["technique"] == "prune" and r["layer"] == layer and r["drop"] <= max_drop
        ]
        return max(ok, default=0.0)

    def min_bits(self, layer: str, max_drop: float) -> int | None:
        ok = [
            r["setting"]
            for r in self.rows
            if r["technique"] == "bits" and r["layer"] == layer and r["drop"] <= max_drop
        ]
        return int(min(ok)) if ok else None

    def to_markdown(self) -> str:
        lines = []
        for tech in dict.fromkeys(r["technique"] for r in self.rows):
            settings = sorted({r["setting"] for r in self.rows if r["technique"] == tech})
            lines += [
                f"**{tech}** (accuracy; baseline {self.baseline:.4f})",
                "",
                "| layer | " + " | ".join(f"{s:g}" for s in settings) + " |",
                "|---|" + "---|" * len(settings),
            ]
            for layer in self.layers:
                acc = dict(self.curve(tech, layer))
                cells = [f"{acc[s]:.4f}" if s in acc else "—" for s in settings]
                lines.append(f"| {layer} | " + " | ".join(cells) + " |")
            lines.append("")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None) -> Any:
        """One panel per technique: accuracy vs setting, one line per layer."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        techs = list(dict.fromkeys(r["technique"] for r in self.rows))
        fig, axes = plt.subplots(1, len(techs), figsize=(4.5 * len(techs), 3.8), squeeze=False)
        labels = {"prune": "pruned fraction", "bits": "weight bits", "rank": "kept rank fraction"}
        for ax, tech in zip(axes[0], techs, strict=True):
            for layer in self.layers:
                pts = self.curve(tech, layer)
                if pts:
                    xs, ys = zip(*sorted(pts), strict=True)
                    ax.plot(xs, ys, marker="o", label=layer)
            ax.axhline(self.baseline, color="grey", linestyle="--", label="baseline")
            ax.set_xlabel(labels.get(tech, tech))
            ax.set_ylabel("accuracy")
            ax.set_title(f"{tech} sensitivity (one layer at a time)")
        axes[0][-1].legend(fontsize="x-small")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def _rank_approx(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    mat = weight.reshape(weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = max(1, round(fraction * len(s)))
    return ((u[:, :r] * s[:r]) @ vh[:r]).reshape(weight.shape)


def layer_sensitivity(
    model: nn.Module,
    data: Any,
    *,
    techniques: Sequence[str] = TECHNIQUES,
    ratios: Sequence[float] = (0.5, 0.7, 0.9),
    bits: Sequence[int] = (8, 4, 2),
    ranks: Sequence[float] = (0.5, 0.25, 0.1),
    targets: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    split: str = "val",
) -> Sensitivity:
    """Scan each targeted Linear/Conv layer alone; the model is left as it was."""
    from dwindle.pruning import sensitivity_scan
    from dwindle.pruning.masks import prunable_modules
    from dwindle.quantization import make_weight_quantizer
    from dwindle.training import evaluate

    unknown = sorted(set(techniques) - set(TECHNIQUES))
    if unknown or not techniques:
        raise ConfigError(f"techniques must be some of {', '.join(TECHNIQUES)} (got {unknown})")
    if any(not 0 < r <= 1 for r in ranks):
        raise ConfigError(f"ranks are fractions of the full rank in (0, 1] (got {list(ranks)})")
    was_training = model.training
    model.eval()
    try:
        base = evaluate(model, data, split)["accuracy"]
        result = Sensitivity(baseline=base)
        if "prune" in techniques:
            scan = sensitivity_scan(
                model, data, ratios, targets=targets, exclude=exclude, split=split
            )
            result.rows += [
                {
                    "technique": "prune",
                    "layer": r["layer"],
                    "setting": r["ratio"],
                    "accuracy": r["accuracy"],
                    "drop": r["drop"],
                }
                for r in scan.rows
            ]
        layers = prunable_modules(model, targets, exclude)
        edits: list[tuple[str, Sequence[Any], Any]] = []
        if "bits" in techniques:
            edits.append(
                (
                    "bits",
                    bits,
                    lambda w, b: make_weight_quantizer("uniform", int(b), True).dequantize(w),
                )
            )
        if "rank" in techniques:
            edits.append(("rank", ranks, _rank_approx))
        for tech, settings, fn in edits:
            for name, layer in layers:
                saved = layer.weight.detach().clone()
                try:
                    for s in settings:
                        with torch.no_grad():
                            layer.weight.copy_(fn(saved, s))
                        acc = evaluate(model, data, split)["accuracy"]
                        result.rows.append(
                            {
                                "technique": tech,
                                "layer": name,
                                "setting": s,
                                "accuracy": acc,
                                "drop": base - acc,
                            }
                        )
                finally:
                    with torch.no_grad():
                        layer.weight.copy_(saved)
        return result
    finally:
        model.train(was_training)


def recipe_sensitivity(
    recipe: str | Path | dict[str, Any], out_dir: str | Path, **options: Any
) -> tuple[Sensitivity, dict[str, Path]]:
    """Sensitivity of a recipe's baseline (trained as the recipe says, or its given weights).

    Writes ``sensitivity.md`` (tables) and ``sensitivity.png`` (plots) to ``out_dir``; a
    ``search:`` section in the recipe is ignored.
    """
    from dwindle.export import atomic_write_bytes, ensure_dir
    from dwindle.pipeline import build_model_and_data
    from dwindle.recipe import load_recipe, read_yaml_mapping
    from dwindle.training import train

    if not isinstance(recipe, dict):
        path = Path(recipe)
        doc = read_yaml_mapping(path)
        doc["base_dir"] = str(path.resolve().parent)
    else:
        doc = dict(recipe)
    doc.pop("search", None)
    loaded = load_recipe(doc)
    torch.manual_seed(loaded.seed)
    model, data = build_model_and_data(loaded)
    if loaded.baseline.train is not None:
        train(model, data, loaded.baseline.train)
    result = layer_sensitivity(model, data, **options)
    out = ensure_dir(out_dir)
    files = {"plot": out / "sensitivity.png"}
    result.plot(files["plot"])
    text = f"# Sensitivity: {loaded.name}\n\n![sensitivity](sensitivity.png)\n\n"
    text += result.to_markdown() + "\nMost sensitive first: " + ", ".join(result.ranking())
    files["report"] = atomic_write_bytes(out / "sensitivity.md", (text + "\n").encode())
    return result, files
