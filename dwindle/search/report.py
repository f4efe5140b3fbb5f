"""Search reports: optimisation history, best-so-far per sampler, importances, Pareto front.

Static matplotlib figures (no interactive backend) and a Markdown report in the run directory.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "best_so_far",
    "plot_best_so_far",
    "plot_history",
    "plot_importances",
    "plot_pareto",
    "trials_table",
]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(height: float = 4.0) -> tuple[Any, Any]:
    """A new 6-inch-wide figure and its axes on the non-interactive backend."""
    return _plt().subplots(figsize=(6, height))


def _save(
    fig: Any,
    ax: Any,
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str | None = None,
    legend: bool = True,
) -> Path:
    """Label ``ax``, write ``fig`` to ``path`` and close it (figures pile up in long searches)."""
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return Path(path)


def best_so_far(values: Sequence[float], direction: str = "maximize") -> list[float]:
    """Running best of ``values`` (NaN entries, e.g. pruned trials, keep the previous best)."""
    out: list[float] = []
    best = float("nan")
    for v in values:
        if v == v and (best != best or (v > best if direction == "maximize" else v < best)):
            best = float(v)
        out.append(best)
    return out


def _complete(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def plot_history(study: Any, path: str | Path, objective: str = "objective") -> Path:
    """Objective of every completed trial and the best so far (single-objective studies)."""
    trials = _complete(study)
    direction = study.directions[0].name.lower()
    xs = [t.number for t in trials]
    ys = [t.values[0] for t in trials]
    fig, ax = _figure()
    ax.scatter(xs, ys, s=14, label="trial")
    ax.step(xs, best_so_far(ys, direction), where="post", color="C3", label="best so far")
    return _save(fig, ax, path, title="optimisation history", xlabel="trial", ylabel=objective)


def plot_best_so_far(
    curves: Mapping[str, Sequence[Sequence[float]]],
    path: str | Path,
    *,
    ylabel: str = "validation accuracy",
    reference: Mapping[str, float] | None = None,
) -> Path:
    """Mean (± min/max band) best-so-far curve per sampler, over several seeds."""
    fig, ax = _figure()
    for i, (name, runs) in enumerate(curves.items()):
        n = min(len(r) for r in runs)
        arr = np.array([list(r)[:n] for r in runs], dtype=float)
        x = np.arange(1, n + 1)
        ax.plot(x, np.nanmean(arr, axis=0), color=f"C{i}", label=f"{name} (mean of {len(runs)})")
        ax.fill_between(
            x, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), color=f"C{i}", alpha=0.15
        )
    for j, (name, value) in enumerate((reference or {}).items()):
        ax.axhline(value, color="grey", linestyle=["--", ":", "-."][j % 3], label=name)
    return _save(
        fig,
        ax,
        path,
        title="best so far per sampler",
        xlabel="trials",
        ylabel=f"best {ylabel} so far",
    )


def plot_importances(study: Any, path: str | Path, target_index: int = 0) -> Path | None:
    """fANOVA parameter importances (None when there are too few trials to compute them)."""
    import optuna

    trials = _complete(study)
    if len(trials) < 2 or not trials[0].params:
        return None
    # the evaluator ranks parameters by how they lower the target: negate maximised objectives
    sign = -1.0 if study.directions[target_index].name.lower() == "maximize" else 1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, target=lambda t: sign * t.values[target_index]
            )
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
    if not imp:
        return None
    names = list(imp)[::-1]
    fig, ax = _figure(0.4 * len(names) + 1.5)
    ax.barh(names, [imp[n] for n in names])
    return _save(
        fig, ax, path, title="parameter importances", xlabel="importance (fANOVA)", legend=False
    )


def plot_pareto(
    points: Sequence[dict[str, Any]],
    front: Sequence[int],
    x: str,
    y: str,
    path: str | Path,
    *,
    marks: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Scatter of all trials on objectives ``x`` and ``y``; the front drawn as a line."""
    fig, ax = _figure()
    ax.scatter([p[x] for p in points], [p[y] for p in points], s=14, color="C0", label="trial")
    on = sorted((p for p in points if p["number"] in set(front)), key=lambda p: p[x])
    ax.plot([p[x] for p in on], [p[y] for p in on], "o-", color="C3", label="Pareto front")
    for p in on:
        ax.annotate(
            str(p["number"]), (p[x], p[y]), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    for i, (name, (mx, my)) in enumerate((marks or {}).items()):
        ax.scatter([mx], [my], marker="*", s=120, color=f"C{i + 4}", label=name, zorder=5)
    xs = [p[x] for p in points if p[x]] + [m[0] for m in (marks or {}).values() if m[0]]
    if x in ("bytes", "flops", "params") and xs and max(xs) / min(xs) > 20:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")  # sizes spanning decades; minor labels would overlap
        ax.xaxis.set_minor_formatter(NullFormatter())
    return _save(fig, ax, path, title="Pareto front", xlabel=x, ylabel=y)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trials_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of trial rows (``number``, ``state``, objectives, params...)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)
