"""The ``dwindle`` command line: demo, run, measure, search, report, zoo, stages."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dwindle.errors import CheckpointError, DwindleError, OutputDirError

app = typer.Typer(
    name="dwindle",
    help="Make trained PyTorch models smaller, faster and cheaper to run, and prove it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
zoo_app = typer.Typer(help="The model zoo.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

console = Console()
err_console = Console(stderr=True)


def _fail(exc: BaseException) -> None:
    from rich.text import Text

    err_console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
    raise typer.Exit(code=2)


def _finish(result: Any) -> None:
    from dwindle.report import print_table

    print_table(result.report, console=console)
    for note in result.report.get("notes", []):
        console.print(f"• {note}", highlight=False)
    console.print(f"\nrun directory: [bold]{result.out_dir}[/bold]")
    for name in ("report.md", "report.html", "metrics.json"):
        console.print(f"  {result.out_dir / name}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory to write.")] = Path("runs/demo"),
) -> None:
    """Train a small baseline offline, run the default recipe, print and write the report."""
    from dwindle.pipeline import run_recipe

    recipe_path = resources.files("dwindle") / "recipes" / "demo.yaml"
    try:
        from dwindle.run_dir import run_name

        if (out / "state.json").exists() and run_name(out) != "demo":
            # the demo starts over in its own earlier run directory, never in another run's
            raise OutputDirError(
                f"{out} holds a run that is not the demo's; the demo would replace it: pass "
                "another --out (or delete that directory)"
            )
        with resources.as_file(recipe_path) as path:
            result = run_recipe(path, out, overwrite=True, console=console)
    except DwindleError as exc:
        _fail(exc)
    _finish(result)


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<name>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over in an existing run dir.")] = False,
) -> None:
    """Run a recipe: baseline, compression stages, measurement, report, export."""
    from dwindle.pipeline import run_recipe

    try:
        result = run_recipe(recipe, out, resume=resume, overwrite=overwrite, console=console)
    except DwindleError as exc:
        _fail(exc)
    _finish(result)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    import yaml

    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--arg expects key=value, got {pair!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str) and "," in parsed:  # 1,8,8 as typed in a shell: a list
            parsed = [yaml.safe_load(part) for part in parsed.split(",")]
        args[key] = parsed
    return args


@app.command()
def measure(
    model: Annotated[str, typer.Argument(help="Zoo name or path/to/file.py:factory.")],
    weights: Annotated[Path | None, typer.Option(help="safetensors or torch checkpoint.")] = None,
    data: Annotated[str, typer.Option(help="Dataset name (see dwindle.data).")] = "mnist",
    root: Annotated[Path | None, typer.Option(help="Dataset directory.")] = None,
    arg: Annotated[
        list[str] | None,
        typer.Option(help="Model kwarg key=value (repeat); a,b,c is a list."),
    ] = None,
    energy: Annotated[
        str, typer.Option(help="auto, nvml (GPU), rapl, codecarbon, estimate or off.")
    ] = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write metrics JSON here.")
    ] = None,
    strip_prefix: Annotated[
        str | None, typer.Option(help="Prefix to strip from the checkpoint's keys.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda: where the model runs.")] = "cpu",
) -> None:
    """Measure any model: accuracy, size, FLOPs, latency, memory, energy."""
    from dwindle import data as data_mod
    from dwindle.metrics import MeasureConfig
    from dwindle.metrics import measure as measure_model
    from dwindle.models import build_model
    from dwindle.report import print_table

    try:
        import torch

        from dwindle.training.evaluate import checked_forward, resolve_device

        dev = resolve_device(device)  # before loading anything: a missing GPU fails fast
        _check_json_target(json_out, [weights, Path(model.partition(":")[0])])
        bundle = data_mod.load(data, root)
        kwargs = _parse_args(arg or [])
        kwargs.setdefault("num_classes", bundle.num_classes)
        if ".py:" not in model:
            kwargs.setdefault("input_shape", bundle.input_shape)
        net = build_model(model, weights=weights, strip_prefix=strip_prefix, **kwargs).to(dev)
        half = _half_dtype(weights)
        if half is not None:  # measure the file as stored, not an fp32 copy of it
            import dwindle as dw

            net = dw.cast_(net, dw.Precision(dtype=half))
            err_console.print(f"note: {weights} stores {half} weights; measured in {half}")
        if weights is None and ".py:" not in model:
            err_console.print(
                f"note: no --weights, so this measures an untrained {model} (random weights); "
                "its accuracy means nothing",
                highlight=False,
            )
        config = MeasureConfig.from_dict({"energy": energy}, "measure")
        with torch.no_grad():  # a model that does not fit the data fails here, clearly
            checked_forward(net.eval(), bundle.example_input(2).to(dev), bundle)
        report = measure_model(net, bundle, config=config, name=model).to_dict()
        if json_out is not None:
            from dwindle.export import atomic_write_bytes

            atomic_write_bytes(json_out, json.dumps(report, indent=2).encode())
    except DwindleError as exc:
        _fail(exc)
    print_table(report, console=console)


def _half_dtype(weights: Path | None) -> str | None:
    """ "fp16"/"bf16" when every floating tensor of a safetensors file has that dtype."""
    if weights is None or not weights.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError):
        return None  # not safetensors: load_weights reads (or refuses) it
    floats = dtypes & {"F16", "BF16", "F32", "F64"}
    return {"F16": "fp16", "BF16": "bf16"}.get(floats.pop()) if len(floats) == 1 else None


def _check_json_target(path: Path | None, inputs: list[Path | None]) -> None:
    """``--json`` must name a writable file that is none of the inputs (checked up front)."""
    if path is None:
        return
    if path.is_dir():
        raise OutputDirError(f"--json {path} is a directory; give a file name such as m.json")
    for item in inputs:
        if item is not None and path.exists() and item.exists() and path.samefile(item):
            raise OutputDirError(
                f"--json {path} is an input of this command; writing the metrics there would "
                "destroy it: give another file name"
            )


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding metrics.json.")],
) -> None:
    """Re-render report.md / report.html / plots from a run's metrics.json."""
    from dwindle.report import print_table, write_report

    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        _fail(FileNotFoundError(f"{metrics} not found: is {run_dir} a dwindle run directory?"))
    try:
        doc = json.loads(metrics.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(CheckpointError(f"{metrics} is not valid JSON ({exc}); re-run the recipe"))
    try:
        files = write_report(doc, run_dir)
    except DwindleError as exc:
        _fail(exc)
    print_table(doc, console=console)
    for path in files.values():
        console.print(f"  {path}")


@app.command()
def search(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML with a 'search:' section.")],
    storage: Annotated[
        str | None, typer.Option(help="Study database URL; postgresql://... joins a shared study.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue a stopped study.")] = False,
    n_trials: Annotated[int | None, typer.Option(help="Trials to complete in total.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory.")] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: recipe name).")] = None,
    report: Annotated[bool, typer.Option(help="Write the report when done.")] = True,
) -> None:
    """HPO, NAS or a joint multi-objective compression search (Optuna)."""
    from dwindle.search import search as run_search

    try:
        result = run_search(
            recipe,
            out,
            storage=storage,
            resume=resume,
            n_trials=n_trials,
            study_name=study,
            report=report,
        )
    except DwindleError as exc:
        _fail(exc)
    summary = result.summary
    console.print(f"study [bold]{result.study.study_name}[/bold] in {summary.get('storage')}")
    console.print(f"trials: {summary.get('states', '')}")
    for note in summary.get("notes", []):
        console.print(f"• {note}", highlight=False)
    if "best" in summary:
        console.print(f"best trial: {summary['best']}", highlight=False)
    for row in summary.get("front", []):
        values = {k: row[k] for k in summary["objectives"]}
        console.print(f"front: trial {row['number']} {values}", highlight=False)
    for name, path in result.files.items():
        if name in ("report", "best_recipe", "summary"):
            console.print(f"  {path}")


@app.command()
def sensitivity(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (its baseline is scanned).")],
    out: Annotated[Path, typer.Option(help="Directory for sensitivity.md / .png.")] = Path(
        "runs/sensitivity"
    ),
) -> None:
    """Per-layer accuracy vs pruning ratio, bit width and rank, with plots."""
    from dwindle.search import recipe_sensitivity

    try:
        result, files = recipe_sensitivity(recipe, out)
    except DwindleError as exc:
        _fail(exc)
    console.print(result.to_markdown(), highlight=False)
    console.print("most sensitive first: " + ", ".join(result.ranking()), highlight=False)
    for path in files.values():
        console.print(f"  {path}")


@app.command()
def stages() -> None:
    """List the compression stages a recipe can use."""
    from dwindle.config import techniques

    for name, tech in sorted(techniques().items()):
        console.print(f"[bold]{name}[/bold]  {tech.config.__name__}  {tech.summary}")


@zoo_app.command("list")
def zoo_list() -> None:
    """List the zoo's models."""
    from dwindle.models import available_models

    for name, summary in sorted(available_models().items()):
        console.print(f"[bold]{name}[/bold]  {summary}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
