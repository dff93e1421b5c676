"""Session-wide real servers; every test starts from empty tables and an empty Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis
from sqlalchemy import Engine, text

from tests.servers import fresh_database, postgres_server, redis_server
from worker.store.db import make_engine
from worker.store.migrate import upgrade
from worker.store.tables import metadata


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with postgres_server() as server_url, fresh_database(server_url) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def session_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url, pool_size=10)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(session_engine: Engine) -> Engine:
    tables = ", ".join(t.name for t in metadata.sorted_tables)
    with session_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return session_engine


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
