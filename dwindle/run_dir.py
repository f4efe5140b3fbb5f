"""A run directory: what ``dwindle run`` may write over, and what it must leave alone.

A run directory holds only what a run writes (``RUN_FILES``). Starting a run in a directory
with other files is refused, so a typo'd ``--out`` never replaces a user's files; ``--overwrite``
removes only what the previous run recorded as its own (``state.json``'s checkpoints, and the
``artifacts`` it exported), and never a file the recipe reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from dwindle.errors import CheckpointError, OutputDirError
from dwindle.export import ensure_dir

__all__ = ["RUN_FILES", "checkpoint_file", "prepare_out_dir", "read_state", "run_name"]

RUN_FILES = frozenset(
    {
        "state.json",
        "checkpoints",
        "artifacts",
        "baseline-last-good.safetensors",
        "metrics.json",
        "report.md",
        "report.html",
        "accuracy_vs_size.png",
        "latency_vs_size.png",
    }
)


def read_state(out_dir: Path) -> dict | None:
    """``state.json`` of the run in ``out_dir`` (None when there is none)."""
    path = out_dir / "state.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not a readable run state ({exc}); start the run again with --overwrite, "
            "or in a new directory with --out"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a run state (a JSON object); use --overwrite")
    return state


def checkpoint_file(out_dir: Path, entry: dict) -> Path:
    """The checkpoint a ``state.json`` entry records, confined to ``out_dir/checkpoints`` (a
    tampered path cannot reach outside it)."""
    return out_dir / "checkpoints" / Path(str(entry.get("file", ""))).name


def run_name(out_dir: Path) -> str | None:
    """The recipe name the run in ``out_dir`` recorded (None: no run, or an older state)."""
    state = read_state(out_dir)
    return None if state is None else state.get("recipe_name")


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def prepare_out_dir(
    out_dir: Path, *, resume: bool, overwrite: bool, inputs: Iterable[str | Path] = ()
) -> None:
    """Check that a run may write ``out_dir`` (see the module docstring), then make it; with
    ``overwrite`` clear the previous run's state, checkpoints and artifacts."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"--out {out_dir} is a file; give a directory")
    try:
        state = read_state(out_dir) if out_dir.exists() else None
    except CheckpointError:
        if resume or not overwrite:
            raise
        state = {}  # an unreadable state is replaced; its checkpoints are not known, so kept
    if state is not None and not resume and not overwrite:
        raise OutputDirError(
            f"{out_dir} already holds a run. Pass --resume to continue it, --overwrite to start "
            "over, or --out to choose another directory."
        )
    foreign = sorted(
        p.name
        for p in (out_dir.iterdir() if out_dir.exists() else [])
        if p.name not in RUN_FILES and not p.name.startswith(".")
    )
    if foreign and not resume:
        shown = ", ".join(foreign[:4]) + (" ..." if len(foreign) > 4 else "")
        raise OutputDirError(
            f"{out_dir} holds files a dwindle run did not write ({shown}); dwindle will not "
            "write over them: choose an empty or new directory with --out"
        )
    inside = [str(p) for p in inputs if p and Path(p).exists() and _inside(Path(p), out_dir)]
    if inside and not resume:
        raise OutputDirError(
            f"the recipe reads {', '.join(inside)} from inside {out_dir}, which this run would "
            "write over; copy it out of the run directory first, or choose another --out"
        )
    ensure_dir(out_dir)
    probe = out_dir / ".dwindle-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to output directory {out_dir}: {exc.strerror}"
        ) from None
    if overwrite and not resume and state is not None:
        recorded = [*state.get("done", {}).values(), *state.get("stale", {}).values()]
        for entry in recorded:  # only the checkpoints it recorded
            path = checkpoint_file(out_dir, entry)
            if path.is_file():
                path.unlink()
        artifacts = out_dir / "artifacts"
        for old in artifacts.iterdir() if artifacts.is_dir() else []:
            if old.is_file():
                old.unlink()
        (out_dir / "state.json").unlink()
