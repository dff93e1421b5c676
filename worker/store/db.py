"""Engines and connections: one pool per process, created after any fork."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg.types.json
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.engine import make_url

from core import jsontext

_engines: dict[tuple[int, str, bool], Engine] = {}

# What COPY (worker.store.bulk) dumps json and jsonb values with.
psycopg.types.json.set_json_dumps(jsontext.dumps_bytes)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` → the psycopg 3 dialect SQLAlchemy needs."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def make_engine(url: str, pool_size: int = 5, *, pre_ping: bool = True) -> Engine:
    """``pre_ping``: test each pooled connection with a round trip before handing it out, so
    that the first use after a PostgreSQL restart does not fail. A worker turns it off: it
    costs a round trip per transaction, and a task that meets a dead connection is retried
    (SQLAlchemy then drops the pool's other connections of before the restart too)."""
    return create_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=10,
        pool_pre_ping=pre_ping,
        # No JIT: every statement here is short, and on a table's first estimates (a
        # campaign's first minute) PostgreSQL compiled a 2 ms read for 5 ms.
        connect_args={"options": "-c timezone=UTC -c jit=off"},
        json_serializer=jsontext.dumps,
    )


def get_engine(url: str, *, pre_ping: bool = True) -> Engine:
    """The process's engine for ``url``; a forked child gets a fresh pool."""
    key = (os.getpid(), url, pre_ping)
    if key not in _engines:
        _engines[key] = make_engine(url, pre_ping=pre_ping)
    return _engines[key]


@contextmanager
def autocommit(engine: Engine) -> Iterator[Connection]:
    """A connection on which every statement commits on its own: for work that needs no
    transaction around its statements, it saves the BEGIN and COMMIT round trips."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")
