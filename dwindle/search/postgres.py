"""A private, throw-away PostgreSQL server for distributed-search tests and benchmarks.

    python -m dwindle.search.postgres            # start one, print its URL, stop on Ctrl-C

``initdb`` into a temporary directory, trust authentication on 127.0.0.1 only, a free port,
torn down (server stopped, directory removed) on exit. PostgreSQL refuses to run as root, so
when run as root the server runs as the unprivileged ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from dwindle.search.storage import SearchError

__all__ = ["find_postgres_bin", "postgres_unavailable_reason", "throwaway_postgres"]

_RUN_AS = "postgres"


def find_postgres_bin() -> Path | None:
    """Directory holding ``initdb`` and ``pg_ctl`` (newest installed version), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for cand in candidates:
        if (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    return None


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def postgres_unavailable_reason() -> str | None:
    """Why a throw-away server cannot be started here (None when it can)."""
    if find_postgres_bin() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found; install them, e.g. "
            "apt-get install postgresql-15"
        )
    if _is_root():
        import pwd

        try:
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and 'runuser' is missing"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -c constraints.txt 'dwindle[search]'"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], what: str) -> None:
    if _is_root():
        cmd = ["runuser", "-u", _RUN_AS, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SearchError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")


@contextlib.contextmanager
def throwaway_postgres(database: str = "dwindle") -> Iterator[str]:
    """Start a private PostgreSQL server; yield its URL; stop it and delete its files."""
    reason = postgres_unavailable_reason()
    if reason is not None:
        raise SearchError(f"cannot start a throw-away PostgreSQL server: {reason}")
    bindir = find_postgres_bin()
    assert bindir is not None
    tmp = Path(tempfile.mkdtemp(prefix="dwindle-pg-"))
    data, sock = tmp / "data", tmp / "sock"
    sock.mkdir()
    if _is_root():
        shutil.chown(tmp, _RUN_AS)
        shutil.chown(sock, _RUN_AS)
        tmp.chmod(0o700)
    port = _free_port()
    started = False
    try:
        _run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off"
        _run(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(tmp / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            "pg_ctl start",
        )
        started = True
        _create_database(port, database)
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}"
    finally:
        if started:
            with contextlib.suppress(SearchError):
                _run(
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    "pg_ctl stop",
                )
        shutil.rmtree(tmp, ignore_errors=True)


def _create_database(port: int, database: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True
            ) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    with throwaway_postgres() as url:
        print(url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
