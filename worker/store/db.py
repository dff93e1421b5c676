"""Engines and connections: one pool per process, created after any fork."""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

_engines: dict[tuple[int, str], Engine] = {}


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` → the psycopg 3 dialect SQLAlchemy needs."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def make_engine(url: str, pool_size: int = 5) -> Engine:
    return create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=True,
        connect_args={"options": "-c timezone=UTC"},
    )


def get_engine(url: str) -> Engine:
    """The process's engine for ``url``; a forked child gets a fresh pool."""
    key = (os.getpid(), url)
    if key not in _engines:
        _engines[key] = make_engine(url)
    return _engines[key]
