"""Where a study lives: a SQLite file in the run directory, or a shared PostgreSQL database.

Both go through Optuna's ``RDBStorage`` with heartbeats: a worker that dies mid-trial stops
beating, the next worker to look marks its trial failed and re-queues it with the same
parameters (``RetryHeartbeatStaleTrialCallback``), so no trial is lost. The tables are
Optuna's own, so ``optuna-dashboard <url>`` reads a dwindle study as it is.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from dwindle._imports import require
from dwindle.errors import DwindleError

__all__ = ["SearchError", "default_url", "mask_url", "open_storage"]


class SearchError(DwindleError, RuntimeError):
    """A study cannot be created, reached or continued."""


def default_url(run_dir: str | Path) -> str:
    """``sqlite:///<run_dir>/study.db``: one file next to the run's report."""
    return f"sqlite:///{Path(run_dir).resolve() / 'study.db'}"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (safe to print)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse: hide everything between ':' and '@'
        head, at, tail = url.rpartition("@")
        if not at:
            return url
        scheme, _, creds = head.partition("://")
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{tail}"


def _driver_url(url: str) -> str:
    # psycopg 3 is the driver the 'search' extra installs; SQLAlchemy defaults to psycopg2
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def _password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password  # type: ignore[return-value]
    except Exception:
        return None


def open_storage(url: str, *, heartbeat: int = 10, retries: int = 3) -> Any:
    """An Optuna ``RDBStorage`` for ``url`` with heartbeats and retry of dead workers' trials.

    Raises :class:`SearchError` naming the URL (password masked) when it cannot be reached.
    """
    optuna = require("optuna", "search", "dwindle search")
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    real = _driver_url(url)
    kwargs: dict[str, Any] = {}
    if real.startswith("postgresql"):
        require("psycopg", "search", "a PostgreSQL study")
        kwargs = {"connect_args": {"connect_timeout": 5}, "pool_pre_ping": True}
    elif real.startswith("sqlite"):
        # concurrent local workers on one file wait for the lock instead of failing at once
        kwargs = {"connect_args": {"timeout": 30}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                real,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=retries),
            )
    except Exception as exc:  # SQLAlchemy/driver errors: connection refused, bad auth, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        secret = _password(real)
        if secret:
            reason = reason.replace(secret, "***")
        raise SearchError(
            f"cannot open the study storage {mask_url(url)}: {reason}. Check that the database "
            "server is running and reachable and that the URL (user, host, port, database) "
            "is right."
        ) from None
