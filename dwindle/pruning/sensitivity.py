"""Sensitivity scan: prune each layer alone at several ratios and measure the accuracy.

The layer-by-layer curves of Han et al. 2015 (Figure 5) that set per-layer pruning ratios;
the search uses the table to choose them automatically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle.errors import ConfigError
from dwindle.pruning.criteria import Magnitude
from dwindle.pruning.masks import get_mask, magnitude_mask, prunable_modules
from dwindle.training import evaluate

__all__ = ["SensitivityResult", "sensitivity_scan"]


@dataclass
class SensitivityResult:
    """``rows``: one ``{layer, ratio, accuracy, drop, params}`` per (layer, ratio) pair.

    ``baseline`` is the unpruned model's accuracy on the same split.
    """

    baseline: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    def curve(self, layer: str) -> list[tuple[float, float]]:
        """``(ratio, accuracy)`` points of one layer."""
        return [(r["ratio"], r["accuracy"]) for r in self.rows if r["layer"] == layer]

    def max_ratio(self, layer: str, max_drop: float) -> float:
        """Largest scanned ratio of ``layer`` losing at most ``max_drop`` accuracy (0 if none)."""
        ok = [r["ratio"] for r in self.rows if r["layer"] == layer and r["drop"] <= max_drop]
        return max(ok, default=0.0)

    def to_markdown(self) -> str:
        """A layer × ratio table of accuracies."""
        ratios = sorted({r["ratio"] for r in self.rows})
        lines = [
            "| layer | " + " | ".join(f"{x:.0%}" for x in ratios) + " |",
            "|---|" + "---|" * len(ratios),
        ]
        for layer in self.layers:
            acc = dict(self.curve(layer))
            lines.append(f"| {layer} | " + " | ".join(f"{acc[x]:.4f}" for x in ratios) + " |")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None) -> Any:
        """A matplotlib figure of accuracy vs ratio per layer; saved to ``path`` when given."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for layer in self.layers:
            xs, ys = zip(*self.curve(layer), strict=True)
            ax.plot(xs, ys, marker="o", label=layer)
        ax.axhline(self.baseline, color="grey", linestyle="--", label="unpruned")
        ax.set_xlabel("pruned fraction of the layer's weights")
        ax.set_ylabel("accuracy")
        ax.set_title("pruning sensitivity (one layer at a time)")
        ax.legend(fontsize="small")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def sensitivity_scan(
    model: nn.Module,
    data: Any,
    ratios: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95),
    *,
    targets: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    split: str = "val",
    batch_size: int = 512,
) -> SensitivityResult:
    """Magnitude-prune each selected layer alone at each ratio and evaluate on ``split``.

    The model is left as it was (each layer's weights are restored after its scan).
    """
    if not ratios or any(not 0 <= r < 1 for r in ratios):
        raise ConfigError(f"ratios must be a non-empty list of values in [0, 1) (got {ratios})")
    layers = prunable_modules(model, targets, exclude)
    base = evaluate(model, data, split, batch_size)["accuracy"]
    result = SensitivityResult(baseline=base)
    for name, module in layers:
        original = module.weight.detach().clone()
        scores = Magnitude().scores(original)
        old = get_mask(module)
        if old is not None:
            scores = scores.masked_fill(~old, -1.0)
        try:
            for ratio in sorted(ratios):
                with torch.no_grad():
                    module.weight.mul_(magnitude_mask(scores, ratio))
                acc = evaluate(model, data, split, batch_size)["accuracy"]
                result.rows.append(
                    {
                        "layer": name,
                        "ratio": ratio,
                        "accuracy": acc,
                        "drop": base - acc,
                        "params": original.numel(),
                    }
                )
                with torch.no_grad():
                    module.weight.copy_(original)
        finally:
            with torch.no_grad():
                module.weight.copy_(original)
    return result
