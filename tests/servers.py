"""Real PostgreSQL and Redis for tests: embedded by default, or named by env.

LEADSCOUT_TEST_DATABASE_URL / LEADSCOUT_TEST_REDIS_URL point the suite at other
servers; a fresh database is created on that server for each test session.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.embedded import start_postgres, start_redis, stop_redis
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
            stop_redis(server, keep_data=False)
