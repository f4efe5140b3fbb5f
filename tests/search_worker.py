"""A tiny search worker for the storage tests: ``python tests/search_worker.py URL STUDY N SLEEP``.

Runs dwindle's worker loop on a study whose trials just sleep ``SLEEP`` seconds and return
their parameter, so several processes (and killing one) can be tested in seconds. An optional
fifth argument ``DIE_AT`` makes the worker exit abruptly when trial ``DIE_AT`` starts, with
Optuna's heartbeat thread disabled: the state of a worker killed before that thread's first
beat, which is the race a real kill can hit.
"""

import os
import sys
import time

from dwindle.search import (
    SearchSpec,
    build_pruner,
    build_sampler,
    open_storage,
    open_study,
    run_worker,
)


def main() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, name, n, sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    die_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
    if die_at is not None:
        import optuna.study._optimize as optimize
        from optuna.storages._heartbeat import NullHeartbeatThread

        optimize.get_heartbeat_thread = lambda *_: NullHeartbeatThread()
    spec = SearchSpec(space={"x": {"low": 0.0, "high": 1.0}}, n_trials=n, heartbeat=1)
    storage = open_storage(url, heartbeat=1)
    study = open_study(
        spec,
        storage,
        name,
        sampler=build_sampler("random", os.getpid()),
        pruner=build_pruner("none"),
    )

    def objective(trial):  # type: ignore[no-untyped-def]
        x = trial.suggest_float("x", 0.0, 1.0)
        print(f"start {trial.number}", flush=True)
        if trial.number == die_at:
            os._exit(9)  # no cleanup, no final state: as SIGKILL leaves it
        time.sleep(sleep)
        return x

    ran = run_worker(study, objective, n, poll=0.2)
    print(f"done {ran}", flush=True)


if __name__ == "__main__":
    main()
