"""``state.json``: the finished steps of a run, their checkpoints, and what each depends on.

Each finished step (the baseline, then every stage) records its checkpoint file, the file's
SHA-256 and a key: a hash of the step's settings chained with every earlier step's
(:func:`step_keys`). A resume keeps the steps whose key still holds and runs the others again.
The checkpoints of steps an edit made stale are not deleted but set aside, recorded under
``stale`` (so ``--overwrite`` still knows them as the run's own), and come back if a later
resume has those settings again: an edit by mistake costs no finished work.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dwindle.errors import CheckpointError, ConfigError
from dwindle.export import atomic_write, atomic_write_bytes, ensure_dir
from dwindle.run_dir import checkpoint_file, read_state

__all__ = ["RunState", "step_keys"]

Entry = dict[str, str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def step_keys(recipe_doc: dict[str, Any], labels: list[str]) -> dict[str, str]:
    """A fingerprint per step of the run: the baseline's covers the recipe's model, data,
    baseline, seed and name; each stage's chains the previous step's with its own settings.
    ``measure`` and ``export`` enter none, since no checkpoint depends on them."""
    base = {k: v for k, v in recipe_doc.items() if k not in ("stages", "measure", "export")}
    key = _digest(base)
    keys = {labels[0]: key}
    for label, raw in zip(labels[1:], recipe_doc.get("stages", []), strict=True):
        key = hashlib.sha256((key + json.dumps(raw, sort_keys=True)).encode()).hexdigest()
        keys[label] = key
    return keys


class RunState:
    """The ``state.json`` of the run in ``out_dir`` of the recipe ``recipe_doc`` (its JSON
    dump), whose steps are ``labels`` (the baseline's, then each stage's)."""

    def __init__(self, out_dir: Path, recipe_doc: dict[str, Any], labels: list[str]) -> None:
        self.path = out_dir / "state.json"
        self.ckpt_dir = out_dir / "checkpoints"
        self.recipe_hash, self.recipe_name = _digest(recipe_doc), recipe_doc.get("name")
        self.keys = step_keys(recipe_doc, labels)
        self.done: dict[str, Entry] = {}
        self.stale: dict[str, Entry] = {}  # set-aside checkpoints, by step key

    def load(self) -> list[str]:
        """Read the finished steps; return those whose settings changed since (to run again).

        A step is kept when its key is unchanged. A changed baseline (model, data, baseline
        training, seed or name), or a run written before steps had keys, resumes only with the
        very same recipe."""
        state = read_state(self.path.parent)
        if state is None:
            return []
        done: dict[str, Entry] = state.get("done", {})
        self.stale = state.get("stale", {})
        if state.get("recipe_hash") == self.recipe_hash:
            # the same recipe: its current keys are exact, so a state from before keys gets them
            self.done = {
                k: {**e, "key": e.get("key", self.keys.get(k, ""))} for k, e in done.items()
            }
            self._write()
            return []
        where = f"cannot resume in {self.path.parent}: the recipe changed since that run started"
        fix = "Run it in a new output directory (--out), or pass --overwrite to start over."
        if not all("key" in entry for entry in done.values()):
            raise ConfigError(
                f"{where}, and that run was written by a dwindle that did not record what each "
                f"step depends on, so none of it can be reused safely. {fix}"
            )
        first = next(iter(self.keys))
        if first in done and done[first]["key"] != self.keys[first]:
            raise ConfigError(
                f"{where}: its model, data, baseline training, seed or name differ, so no "
                f"finished step can be reused. {fix}"
            )
        changed = [k for k, e in done.items() if self.keys.get(k) != e["key"]]
        for label in changed:
            self._set_aside(label, done[label])
        self.done = {k: e for k, e in done.items() if k not in changed}
        for label, key in self.keys.items():  # settings that ran before: their checkpoints
            if label not in self.done and key in self.stale:
                self._bring_back(label, self.stale.pop(key))
        self._write()
        return [k for k in changed if k not in self.done]

    def _file(self, entry: Entry) -> Path:
        return checkpoint_file(self.path.parent, entry)

    def _set_aside(self, label: str, entry: Entry) -> None:
        path = self._file(entry)
        if not path.is_file():
            return
        aside = path.with_name(f"{label}.{entry['key'][:12]}.pt")
        path.replace(aside)
        self.stale[entry["key"]] = {**entry, "file": aside.name}

    def _bring_back(self, label: str, entry: Entry) -> None:
        path = self._file(entry)
        if path.is_file():
            path.replace(self.ckpt_dir / f"{label}.pt")
            self.done[label] = {**entry, "file": f"{label}.pt"}

    def save_model(self, label: str, model: nn.Module) -> None:
        ensure_dir(self.ckpt_dir)
        path = self.ckpt_dir / f"{label}.pt"
        atomic_write(path, lambda p: torch.save(model, p))
        self.done[label] = {"file": path.name, "sha256": _sha256(path), "key": self.keys[label]}
        self._write()

    def _write(self) -> None:
        doc = {
            "recipe_hash": self.recipe_hash,
            "recipe_name": self.recipe_name,
            "done": self.done,
            "stale": self.stale,
        }
        atomic_write_bytes(self.path, json.dumps(doc, indent=2).encode())

    def load_model(self, label: str) -> nn.Module | None:
        entry = self.done.get(label)
        if entry is None:
            return None
        path = self._file(entry)
        if not path.exists() or _sha256(path) != entry["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is missing or was modified after it was written; "
                "refusing to load it. Start the run again with --overwrite."
            )
        # Safe: our own file, verified by the hash recorded when we wrote it (see module doc).
        return torch.load(path, map_location="cpu", weights_only=False)
