"""Distributed search: two `dwindle search` workers on one PostgreSQL study, then one killed.

    python benchmarks/search_distributed.py

A throw-away PostgreSQL server (``dwindle.search.throwaway_postgres``: initdb in a temp dir,
trust auth on 127.0.0.1, a free port) holds the study. Each worker is the real command line,
``python -m dwindle.cli search recipe.yaml --storage postgresql://...``, tuning a small MLP on
the scikit-learn digits. Run 1: two workers complete N trials. Run 2: one worker is SIGKILLed
while it is inside a trial; its heartbeat goes stale, the survivor marks the trial failed,
re-runs it with the same parameters and finishes the budget. Counted from the study itself:
completed trials, duplicates (a trial completed twice, counting retries as their original),
lost trials (failed and neither re-queued nor surplus). Writes results/search_distributed.*.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from _common import write_results

from dwindle.search import SearchSpec, open_storage, open_study, throwaway_postgres
from dwindle.search.study import build_pruner, build_sampler

RECIPE: dict[str, Any] = {
    "name": "digits-distributed",
    "model": {"zoo": "mlp", "args": {"hidden": [64]}},
    "data": {"name": "digits"},
    "baseline": {"train": {"epochs": 6, "optimizer": "adam", "lr": 0.003}},
    "search": {
        "kind": "hpo",
        "sampler": "random",
        "heartbeat": 2,
        "retrain": False,
        "space": {
            "baseline.train.lr": {"low": 1e-4, "high": 1e-1, "log": True},
            "baseline.train.batch_size": {"choices": [32, 64, 128]},
            "model.args.dropout": {"low": 0.0, "high": 0.5},
        },
    },
}


def _worker(recipe: Path, url: str, study: str, n: int, out: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "dwindle.cli",
        "search",
        str(recipe),
        "--storage",
        url,
        "--study",
        study,
        "--n-trials",
        str(n),
        "--out",
        str(out),
        "--no-report",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _study(url: str, name: str) -> Any:
    spec = SearchSpec.from_dict(RECIPE["search"])
    storage = open_storage(url, heartbeat=2)
    return open_study(
        spec, storage, name, sampler=build_sampler("random", 0), pruner=build_pruner("none")
    )


def _count(url: str, name: str, n: int) -> dict[str, Any]:
    study = _study(url, name)
    trials = study.get_trials(deepcopy=False)
    states = optuna.trial.TrialState
    complete = [t for t in trials if t.state == states.COMPLETE]
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    originals = [t.system_attrs.get("failed_trial", t.number) for t in complete]
    failed = [t for t in trials if t.state == states.FAIL]
    lost = [t.number for t in failed if t.number not in retried and not t.user_attrs.get("surplus")]
    return {
        "trials_expected": n,
        "trials_complete": len(complete),
        "duplicates": len(originals) - len(set(originals)),
        "lost": len(lost),
        "retried": len(retried),
        "surplus": sum(bool(t.user_attrs.get("surplus")) for t in failed),
        "workers_seen": len({t.user_attrs.get("worker") for t in complete}),
        "trials_total": len(trials),
    }


def _run(url: str, recipe: Path, tmp: Path, name: str, n: int, kill: bool) -> dict[str, Any]:
    _study(url, name)  # create the tables and the study before the workers start
    start = time.perf_counter()
    procs = [_worker(recipe, url, name, n, tmp / f"{name}-{i}") for i in range(2)]
    killed_trial = None
    if kill:
        victim = procs[0]
        tag = f"{socket.gethostname()}:{victim.pid}"
        deadline = time.monotonic() + 300
        while killed_trial is None and time.monotonic() < deadline:
            for t in _study(url, name).get_trials(deepcopy=False):
                running = t.state == optuna.trial.TrialState.RUNNING
                # t.number >= 1: the victim finished a trial first, so the kill is mid-study
                if running and t.user_attrs.get("worker") == tag and t.number >= 1:
                    killed_trial = t.number
            time.sleep(0.2)
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        print(f"killed worker pid {victim.pid} inside trial {killed_trial}", flush=True)
    for p in procs[1:] if kill else procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err.decode()[-2000:]}")
    metrics = _count(url, name, n)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    if kill:
        metrics["killed_trial"] = killed_trial
        study = _study(url, name)
        retry = [
            t
            for t in study.get_trials(deepcopy=False)
            if t.system_attrs.get("failed_trial") == killed_trial
        ]
        metrics["killed_trial_rerun_as"] = retry[0].number if retry else None
        metrics["killed_trial_rerun_state"] = retry[0].state.name.lower() if retry else None
    return metrics


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--trials",
        type=int,
        nargs=2,
        default=[10, 8],
        help="trials of the plain run and of the run with a killed worker",
    )
    n_plain, n_kill = parser.parse_args().trials
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dwindle-dist-") as tmpdir, throwaway_postgres() as url:
        tmp = Path(tmpdir)
        recipe = tmp / "recipe.yaml"
        recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
        for variant, name, n, kill in (
            ("two_workers", "plain", n_plain, False),
            ("one_worker_killed", "killed", n_kill, True),
        ):
            metrics = _run(url, recipe, tmp, name, n, kill)
            print(variant, metrics, flush=True)
            rows.append(
                {
                    "variant": variant,
                    "model": "mlp",
                    "dataset": "digits",
                    "split": "val",
                    "metrics": metrics,
                }
            )
    notes = [
        "PostgreSQL: a throw-away server from dwindle.search.throwaway_postgres (PostgreSQL "
        f"binaries {_pg_version()}); 2 worker processes of the real CLI "
        "(`python -m dwindle.cli search recipe.yaml --storage postgresql://...`), heartbeat 2 s",
        "one_worker_killed: SIGKILL while the victim was inside a trial (trial number >= 1, "
        "see killed_trial in the JSON); the survivor failed the stale trial and re-ran it with "
        "the same parameters (killed_trial_rerun_as)",
        "duplicates: completed trials sharing an original trial number (a retry counts as "
        "its original); lost: failed trials neither re-queued nor surplus",
        "objective: validation accuracy of a 64-unit MLP on the digits, 6 epochs per trial",
    ]
    cols = [
        ("expected", "metrics.trials_expected"),
        ("complete", "metrics.trials_complete"),
        ("duplicates", "metrics.duplicates"),
        ("lost", "metrics.lost"),
        ("retried", "metrics.retried"),
        ("surplus", "metrics.surplus"),
        ("workers", "metrics.workers_seen"),
        ("seconds", "metrics.seconds"),
    ]
    write_results(
        "search_distributed",
        rows,
        {"distributed_postgres": {"candidate": "one_worker_killed"}},
        columns=cols,
        notes=notes,
        extra_packages=("optuna", "psycopg", "SQLAlchemy"),
    )


def _pg_version() -> str:
    from dwindle.search.postgres import find_postgres_bin

    bindir = find_postgres_bin()
    if bindir is None:
        return "unknown"
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
