"""Distributed search against a real PostgreSQL server (a throw-away one, started here).

Two worker processes share one study: all trials complete with no duplicates, also when one
worker is SIGKILLed mid-trial (heartbeat → trial failed → re-queued → run by the survivor).
The SQLite resume test kills the only worker and continues with a fresh one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

optuna = pytest.importorskip("optuna")

from dwindle.search import postgres_unavailable_reason, throwaway_postgres  # noqa: E402

WORKER = Path(__file__).with_name("search_worker.py")
ROOT = Path(__file__).resolve().parents[1]
_REASON = postgres_unavailable_reason()
needs_pg = pytest.mark.skipif(_REASON is not None, reason=f"no PostgreSQL here: {_REASON}")


def _worker(
    url: str, study: str, n: int, sleep: float, die_at: int | None = None
) -> subprocess.Popen[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    extra = [] if die_at is None else [str(die_at)]
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, study, str(n), str(sleep), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _communicate_or_explain(proc: subprocess.Popen[str], url: str, study: str) -> str:
    """The worker's output; if it hangs, fail with that output and the trials' states."""
    try:
        return proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0]
        from dwindle.search import open_storage

        s = optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=1))
        states = [(t.number, t.state.name, t.user_attrs) for t in s.get_trials(deepcopy=False)]
        pytest.fail(f"worker still running after 120 s; trials {states}; output:\n{out}")


def _wait_for_start(proc: subprocess.Popen[str], count: int = 1) -> None:
    assert proc.stdout is not None
    seen = 0
    while seen < count:
        line = proc.stdout.readline()
        assert line, "worker ended before starting a trial"
        seen += line.startswith("start")


def _create(url: str, study: str) -> None:
    # the tables and the study exist before the workers race to open them
    from dwindle.search import open_storage

    optuna.create_study(
        storage=open_storage(url, heartbeat=1), study_name=study, direction="maximize"
    )


def _check(url: str, study: str, n: int) -> dict[str, int]:
    from dwindle.search import open_storage

    s = optuna.load_study(study_name=study, storage=open_storage(url, heartbeat=1))
    trials = s.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    originals = [t.system_attrs.get("failed_trial", t.number) for t in complete]
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    # every failed trial was either re-queued (a dead worker's) or surplus, never lost
    lost = [t.number for t in failed if t.number not in retried and not t.user_attrs.get("surplus")]
    assert not lost, f"failed trials neither retried nor surplus: {lost}"
    assert len(complete) == n, [(t.number, t.state) for t in trials]
    assert len(set(originals)) == len(originals), "a trial completed twice"
    workers = {t.user_attrs["worker"] for t in complete}
    return {"complete": len(complete), "retried": len(retried), "workers": len(workers)}


@needs_pg
def test_two_workers_complete_n_trials_without_duplicates_even_when_one_is_killed() -> None:
    with throwaway_postgres() as url:
        _create(url, "plain")
        procs = [_worker(url, "plain", 6, 0.2) for _ in range(2)]
        outs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        stats = _check(url, "plain", 6)
        assert stats["workers"] == 2  # both took part

        _create(url, "killed")
        victim = _worker(url, "killed", 4, 1.0)
        survivor = _worker(url, "killed", 4, 1.0)
        _wait_for_start(victim)  # the victim is inside a trial now
        time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        out = survivor.communicate(timeout=120)[0]
        assert survivor.returncode == 0, out
        stats = _check(url, "killed", 4)
        assert stats["retried"] >= 1  # the killed trial was failed by heartbeat and re-queued


def test_resume_after_the_only_worker_was_killed_loses_no_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _create(url, "resume")
    first = _worker(url, "resume", 4, 1.0)
    _wait_for_start(first, 2)  # second trial started: one complete, one running
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = _worker(url, "resume", 4, 0.2)
    out = _communicate_or_explain(second, url, "resume")
    assert second.returncode == 0, out
    stats = _check(url, "resume", 4)
    assert stats["retried"] == 1


def test_a_worker_killed_before_its_first_heartbeat_does_not_block_the_next(
    tmp_path: Path,
) -> None:
    # Optuna's heartbeat thread beats a moment after a trial starts; dwindle records the first
    # beat itself before the objective runs, so such a trial still goes stale and is retried
    url = f"sqlite:///{tmp_path / 'study.db'}"
    _create(url, "early")
    first = _worker(url, "early", 3, 0.2, die_at=1)
    out = first.communicate(timeout=60)[0]
    assert first.returncode == 9, out
    second = _worker(url, "early", 3, 0.2)
    out = _communicate_or_explain(second, url, "early")
    assert second.returncode == 0, out
    stats = _check(url, "early", 3)
    assert stats["retried"] == 1


def test_resume_reruns_a_trial_interrupted_by_ctrl_c(tmp_path: Path) -> None:
    from dwindle.search import SearchSpec, build_pruner, build_sampler, open_storage, open_study
    from dwindle.search.study import requeue_interrupted, run_worker

    spec = SearchSpec(space={"x": {"low": 0.0, "high": 1.0}}, n_trials=3)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)
    study = open_study(
        spec, storage, "s", sampler=build_sampler("random", 0), pruner=build_pruner("none")
    )

    def stop_at_second(trial: Any) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if trial.number == 1:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt):
        run_worker(study, stop_at_second, 3)
    interrupted = study.trials[1]
    assert interrupted.state.name == "FAIL" and interrupted.user_attrs["interrupted"]
    assert requeue_interrupted(study) == [1]
    assert requeue_interrupted(study) == []  # queued once only
    run_worker(study, lambda t: t.suggest_float("x", 0.0, 1.0), 3)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    assert any(
        t.params == interrupted.params and t.user_attrs.get("retry_of") == 1 for t in complete
    )
