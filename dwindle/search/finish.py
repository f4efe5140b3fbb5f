"""After the trials: choose the best trial (or the Pareto front), export recipes, retrain, report.

A constrained search (``autotune``) never hands back a model that misses its constraint
without saying so: when no trial meets it, the layer-by-layer fallback runs, and if even
that misses, the summary's ``constraint_met`` is False and the report shows the closest trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dwindle.export import atomic_write_bytes, ensure_dir
from dwindle.search.report import (
    plot_history,
    plot_importances,
    plot_pareto,
    trials_table,
)

__all__ = ["finish", "pareto_front", "trial_rows"]


def trial_rows(study: Any, objectives: list[str]) -> list[dict[str, Any]]:
    """One flat row per trial: number, state, objective values, metrics, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"number": t.number, "state": t.state.name.lower()}
        metrics = t.user_attrs.get("metrics", {})
        for name in objectives:
            row[name] = metrics.get(name)
        for key in ("accuracy", "bytes", "latency", "params", "flops", "energy"):
            row.setdefault(key, metrics.get(key))
        if "constraint" in t.user_attrs:
            row["constraint_violation"] = max(0.0, float(t.user_attrs["constraint"]))
        for key in ("error", "over_budget", "surplus", "worker"):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        row["params_"] = dict(t.params)
        rows.append(row)
    return rows


def _dominates(
    a: dict[str, Any], b: dict[str, Any], objectives: list[str], dirs: list[str]
) -> bool:
    better = False
    for name, d in zip(objectives, dirs, strict=True):
        x, y = a[name], b[name]
        if (x < y) if d == "maximize" else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(
    rows: list[dict[str, Any]], objectives: list[str], directions: list[str]
) -> list[int]:
    """Numbers of the non-dominated completed (and feasible) trials."""
    done = [r for r in rows if r["state"] == "complete" and not r.get("constraint_violation")]
    front, seen = [], set()
    for r in done:
        if any(_dominates(o, r, objectives, directions) for o in done if o is not r):
            continue
        key = (tuple(r[o] for o in objectives), tuple(sorted(map(str, r["params_"].items()))))
        if key not in seen:  # a sampler may repeat a configuration: list it once
            seen.add(key)
            front.append(r["number"])
    return front


def _best(rows: list[dict[str, Any]], objective: str, direction: str) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "complete" and not r.get("constraint_violation")]
    if not done:
        return None
    key = (lambda r: r[objective]) if direction == "minimize" else (lambda r: -r[objective])
    return min(done, key=key)


def _write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    return atomic_write_bytes(path, yaml.safe_dump(doc, sort_keys=False).encode())


def finish(result: Any) -> None:
    """Fill ``result.summary`` and ``result.files``; see the module docstring."""
    spec, study, out, ev = result.spec, result.study, result.out_dir, result.evaluator
    objectives, dirs = spec.objectives, spec.directions
    rows = trial_rows(study, objectives)
    summary: dict[str, Any] = {
        "kind": spec.kind,
        "study": study.study_name,
        "objectives": dict(zip(objectives, dirs, strict=True)),
        "sampler": spec.sampler_name,
        "pruner": spec.pruner,
        "n_trials": spec.n_trials,
        "states": {s: sum(r["state"] == s for r in rows) for s in {r["state"] for r in rows}},
    }
    files: dict[str, Path] = {}
    notes: list[str] = []
    if spec.constraint is not None:
        base_acc = ev.baseline()[2]
        summary["baseline_accuracy"] = base_acc
        summary["constraint"] = f"accuracy >= baseline - {spec.constraint.max_drop} pt"
    front = pareto_front(rows, objectives, dirs) if len(objectives) > 1 else []
    best = _best(rows, objectives[0], dirs[0])
    chosen_doc: dict[str, Any] | None = None
    if spec.kind == "autotune":
        from dwindle.search.autotune import resolve

        outcome = resolve(ev, rows, best)
        summary.update(outcome.summary)
        notes += outcome.notes
        chosen_doc = outcome.recipe
    elif best is not None:
        chosen_doc = ev.recipe_doc(best["params_"])
    if best is not None:
        summary["best"] = {
            "number": best["number"],
            "params": best["params_"],
            **{k: best[k] for k in objectives},
        }
    if front:
        summary["front"] = [r for r in rows if r["number"] in front]
        fdir = ensure_dir(out / "front")
        for r in summary["front"]:
            doc = ev.recipe_doc(r["params_"])
            doc["name"] = f"{doc.get('name', 'run')}-trial{r['number']}"
            files[f"front:{r['number']}"] = _write_yaml(fdir / f"trial-{r['number']}.yaml", doc)
    if chosen_doc is not None:
        chosen_doc = dict(chosen_doc, name=f"{chosen_doc.get('name', 'run')}-best")
        files["best_recipe"] = _write_yaml(out / "best.yaml", chosen_doc)
    files.update(_plots(study, rows, objectives, front, out))
    atomic_write_bytes(out / "trials.json", json.dumps(rows, indent=2, default=str).encode())
    files["trials"] = out / "trials.json"
    if spec.retrain and chosen_doc is not None and summary.get("constraint_met", True):
        from dwindle.pipeline import run_recipe

        run = run_recipe(
            _with_base(chosen_doc, ev.base_dir),
            out / "best",
            overwrite=True,
            console=_quiet_console(),
        )
        summary["retrained"] = {
            "dir": str(out / "best"),
            "rows": [
                {"variant": r["variant"], "metrics": _short(r["metrics"])}
                for r in run.report["rows"]
            ],
        }
        files["best_run"] = out / "best"
    summary["notes"] = notes
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())
    files["summary"] = out / "summary.json"
    files["report"] = _markdown(out, summary, rows, objectives, files)
    result.summary.update(summary)
    result.files.update(files)


def _with_base(doc: dict[str, Any], base_dir: str | None) -> dict[str, Any]:
    import copy

    from dwindle.search.trials import silenced

    return dict(silenced(copy.deepcopy(doc)), base_dir=base_dir)


def _quiet_console() -> Any:
    import io

    from rich.console import Console

    return Console(file=io.StringIO())


def _short(m: dict[str, Any]) -> dict[str, Any]:
    keep = (
        "accuracy",
        "bytes",
        "params",
        "nonzeros",
        "flops",
        "compression_rate",
        "speedup_b1",
        "speedup_b32",
        "energy_j",
        "energy_source",
    )
    out = {k: m[k] for k in keep if k in m}
    out["latency_ms"] = m.get("latency_ms")
    return out


def _plots(
    study: Any, rows: list[dict[str, Any]], objectives: list[str], front: list[int], out: Path
) -> dict[str, Path]:
    files: dict[str, Path] = {}
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        return files
    if len(objectives) == 1:
        files["history"] = plot_history(study, out / "history.png", objectives[0])
    else:
        x = next((o for o in objectives if o != "accuracy"), objectives[0])
        y = "accuracy" if "accuracy" in objectives else objectives[1]
        pts = [r for r in done if r[x] is not None and r[y] is not None]
        files["pareto"] = plot_pareto(pts, front, x, y, out / "pareto.png")
    imp = plot_importances(study, out / "importances.png")
    if imp is not None:
        files["importances"] = imp
    return files


def _markdown(
    out: Path,
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    objectives: list[str],
    files: dict[str, Path],
) -> Path:
    lines = [f"# dwindle search: {summary['study']} ({summary['kind']})", ""]
    lines.append(
        f"Objectives: {', '.join(f'{k} ({v})' for k, v in summary['objectives'].items())}; "
        f"sampler {summary['sampler']}, pruner {summary['pruner']}, "
        f"{summary['n_trials']} trials; states: {summary['states']}."
    )
    if "constraint" in summary:
        met = summary.get("constraint_met")
        lines += [
            "",
            f"Constraint: {summary['constraint']} (baseline "
            f"{summary['baseline_accuracy']:.4f}): **{'met' if met else 'NOT met'}**.",
        ]
    for note in summary.get("notes", []):
        lines.append(f"- {note}")
    for key, title in (
        ("history", "Optimisation history"),
        ("pareto", "Pareto front"),
        ("importances", "Parameter importances"),
    ):
        if key in files:
            lines += ["", f"## {title}", "", f"![{key}]({files[key].name})"]
    if summary.get("front"):
        cols = ["number", *objectives]
        lines += [
            "",
            "## Pareto front (recipes in front/)",
            "",
            trials_table(summary["front"], cols),
        ]
    if "best" in summary:
        lines += [
            "",
            "## Best trial",
            "",
            "```yaml",
            yaml.safe_dump(summary["best"], sort_keys=False).strip(),
            "```",
        ]
    if "closest" in summary:
        lines += [
            "",
            "## Closest trials (constraint not met)",
            "",
            trials_table(
                summary["closest"], ["number", "accuracy", *objectives, "constraint_violation"]
            ),
        ]
    cols = ["number", "state", *dict.fromkeys(["accuracy", *objectives])]
    lines += ["", "## All trials", "", trials_table(rows, cols)]
    return atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
