"""Samplers, pruners, the study, and the worker loop that runs exactly ``n_trials`` trials.

Several workers (processes or machines) may run :func:`run_worker` on one study. Trial
numbers are handed out by the database, so "is this trial within the budget?" has one answer
for everybody: a trial runs when fewer than ``n_trials`` live (not failed) trials precede it.
A trial beyond the budget is closed at once as failed with ``user_attrs['surplus']``; a trial
of a killed worker is failed by the heartbeat check and re-queued with the same parameters.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from dwindle._imports import require
from dwindle.search.space import SearchSpec
from dwindle.search.storage import SearchError

__all__ = [
    "TrialFailed",
    "build_pruner",
    "build_sampler",
    "open_study",
    "requeue_interrupted",
    "run_worker",
]


class _Surplus(Exception):
    """Raised inside a trial that other workers' trials have made unnecessary."""


class TrialFailed(Exception):
    """A trial could not be evaluated (the study records it failed and goes on)."""


def build_sampler(name: str, seed: int, *, startup: int | None = None) -> Any:
    """Optuna sampler by dwindle name: random, tpe, gp, cmaes, nsga2 or motpe.

    Constraints reach the samplers through ``trial.set_constraint`` (Optuna 5).
    """
    optuna = require("optuna", "search", "dwindle search")
    s = optuna.samplers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            return s.RandomSampler(seed=seed)
        if name in ("tpe", "motpe"):
            kw = {"n_startup_trials": startup} if startup is not None else {}
            return s.TPESampler(seed=seed, multivariate=True, **kw)
        if name == "gp":
            require("scipy", "search", "the Gaussian-process sampler")
            kw = {"n_startup_trials": startup} if startup is not None else {}
            return s.GPSampler(seed=seed, **kw)
        if name == "cmaes":
            require("cmaes", "search", "the CMA-ES sampler")
            kw = {"n_startup_trials": startup} if startup is not None else {}
            return s.CmaEsSampler(seed=seed, warn_independent_sampling=False, **kw)
        if name == "nsga2":
            pop = {"population_size": max(4, startup)} if startup else {}
            return s.NSGAIISampler(seed=seed, **pop)
    raise SearchError(f"unknown sampler {name!r}")


def build_pruner(name: str, n_epochs: int | None = None) -> Any:
    """Optuna pruner by dwindle name: none, median, halving or hyperband."""
    optuna = require("optuna", "search", "dwindle search")
    p = optuna.pruners
    if name == "none":
        return p.NopPruner()
    if name == "median":
        return p.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "halving":
        return p.SuccessiveHalvingPruner(min_resource=1)
    if name == "hyperband":
        return p.HyperbandPruner(min_resource=1, max_resource=n_epochs or "auto")
    raise SearchError(f"unknown pruner {name!r}")


def open_study(
    spec: SearchSpec,
    storage: Any,
    name: str,
    *,
    sampler: Any,
    pruner: Any,
    must_exist: bool | None = None,
) -> Any:
    """Create or join study ``name``. ``must_exist``: True (resume), False (fresh) or None."""
    optuna = require("optuna", "search", "dwindle search")
    exists = name in {s.study_name for s in storage.get_all_studies()}
    if must_exist is True and not exists:
        raise SearchError(f"--resume: there is no study {name!r} to continue in this storage")
    if must_exist is False and exists:
        raise SearchError(
            f"study {name!r} already exists in this run's storage; pass --resume to continue it "
            "or --out to start a new run directory"
        )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=spec.directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if [d.name.lower() for d in study.directions] != spec.directions:
        raise SearchError(
            f"study {name!r} optimises {[d.name.lower() for d in study.directions]}, not "
            f"{spec.directions}; use another study name"
        )
    stored = study.user_attrs.get("objectives")
    if stored is not None and list(stored) != list(spec.objectives):
        # same directions, other metrics: resuming would mix values of different objectives
        raise SearchError(
            f"study {name!r} measures objectives {list(stored)}, not {list(spec.objectives)}; "
            "keep its objectives to resume it, or use another study name / --out"
        )
    return study


def _retried(trials: Sequence[Any]) -> set[int]:
    """Numbers of failed trials that were re-queued (by heartbeat, or after an interrupt)."""
    found = {t.system_attrs.get("failed_trial") for t in trials}
    found |= {t.user_attrs.get("retry_of") for t in trials}
    return {n for n in found if n is not None}


def requeue_interrupted(study: Any) -> list[int]:
    """Re-queue (same parameters) trials failed by an interrupt (Ctrl-C) and not re-run yet."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = _retried(trials)
    out = []
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in done:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            out.append(t.number)
    return out


def _counts(study: Any, before: int | None = None) -> dict[str, int]:
    from optuna.trial import TrialState

    out = {"done": 0, "live": 0, "running": 0, "waiting": 0, "failed": 0}
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)
    for t in trials:
        if before is not None and t.number >= before:
            continue
        surplus = t.user_attrs.get("surplus", False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            out["done"] += 1
            out["live"] += 1
        elif t.state == TrialState.RUNNING:
            out["running"] += 1
            out["live"] += 1
        elif t.state == TrialState.WAITING:
            out["waiting"] += 1
            out["live"] += 1
        elif t.state == TrialState.FAIL and not surplus and t.number not in retried:
            out["failed"] += 1
    return out


def _beat_now(study: Any, trial: Any) -> None:
    """Record the trial's first heartbeat before its objective runs.

    Optuna's heartbeat thread writes the first beat a moment after the trial starts; a worker
    killed in that moment leaves a RUNNING trial with no heartbeat, which the stale check
    never fails, so every later worker would wait for it forever. Seen in CI.
    """
    storage = study._storage
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:
        storage.record_heartbeat(trial._trial_id)


def run_worker(
    study: Any,
    objective: Callable[[Any], Any],
    n_trials: int,
    *,
    poll: float = 1.0,
    max_failures: int | None = None,
    on_trial: Callable[[Any], None] | None = None,
) -> int:
    """Run trials of ``study`` until ``n_trials`` have completed (or been pruned) in total.

    Returns the number of trials this worker ran. Waits while other workers still run
    the last trials, so a trial of a worker that dies is re-run here after its heartbeat
    goes stale.
    """
    optuna = require("optuna", "search", "dwindle search")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    max_failures = max_failures if max_failures is not None else max(3, n_trials)
    ran: list[int] = []

    def guarded(trial: Any) -> Any:
        _beat_now(study, trial)
        if _counts(study, before=trial.number)["live"] >= n_trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus
        trial.set_user_attr("worker", worker)
        ran.append(trial.number)
        try:
            return objective(trial)
        except TrialFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)  # --resume re-runs it
            raise

    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
        c = _counts(study)
        if c["done"] >= n_trials:
            return len(ran)
        if c["failed"] >= max_failures:
            raise SearchError(
                f"{c['failed']} trials failed (see their 'error' attribute in the study); "
                "stopping. The space may hold only invalid configurations."
            )
        if c["live"] - c["waiting"] >= n_trials and c["waiting"] == 0:
            time.sleep(poll)  # the budget is taken by running trials: wait for them (or death)
            continue
        start = len(ran)
        study.optimize(guarded, n_trials=1, catch=(_Surplus, TrialFailed), gc_after_trial=False)
        if on_trial is not None:
            for number in ran[start:]:
                on_trial(study.get_trials(deepcopy=False)[number])
