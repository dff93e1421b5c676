"""Session-wide real servers; every test starts from empty tables and an empty Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from psycopg.errors import DeadlockDetected, LockNotAvailable
from redis import Redis
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from tests.servers import fresh_database, postgres_server, redis_server
from worker.store.db import make_engine
from worker.store.migrate import upgrade
from worker.store.tables import metadata

# Other sessions may still be at work when a test starts: an e2e worker finishing the
# previous test's async command, the relay's sweep. Emptying locks every table against
# writers (EXCLUSIVE: plain reads go on), then deletes children first. A straggler holding
# one table while it waits for another is a lock-order deadlock, so each attempt waits less
# than PostgreSQL's deadlock_timeout (1 s): the emptying always gives way first, and retries.
# DELETE rather than TRUNCATE: ~10 ms instead of ~150 ms per test on these tiny tables, and
# no ACCESS EXCLUSIVE lock to block readers. No test relies on identity values restarting.
LOCK_TIMEOUT = "100ms"
EMPTYING_DEADLINE_S = 30
TABLES = metadata.sorted_tables


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with postgres_server() as server_url, fresh_database(server_url) as url:
        upgrade(url)
        _commit_without_flush(url)
        yield url


def _commit_without_flush(url: str) -> None:
    """``synchronous_commit = off`` for every session on the test database, the services'
    too: a commit returns before its WAL reaches the disk. Only a crash of the server could
    lose the last commits (the database is thrown away after the run); what a session sees,
    locks and isolation are unchanged. Saves an fsync per commit, thousands per run."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar_one()
            conn.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    finally:
        engine.dispose()


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
    empty_tables(session_engine)
    return session_engine


def empty_tables(engine: Engine) -> None:
    """Deletes every row of every table, retrying while other sessions hold locks on them."""
    deadline = time.monotonic() + EMPTYING_DEADLINE_S
    while True:
        try:
            with engine.begin() as conn:
                _delete_all(conn)
            return
        except OperationalError as exc:
            if not isinstance(exc.orig, LockNotAvailable | DeadlockDetected):
                raise
            if time.monotonic() > deadline:
                pytest.fail(_still_locked(engine), pytrace=False)


def _delete_all(conn: Connection) -> None:
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.exec_driver_sql(EMPTYING)


# The lock, then every DELETE, children first: one round trip instead of one per table.
EMPTYING = "; ".join(
    [
        f"LOCK TABLE {', '.join(t.name for t in TABLES)} IN EXCLUSIVE MODE",
        *(f"DELETE FROM {t.name}" for t in reversed(TABLES)),
    ]
)


def _still_locked(engine: Engine) -> str:
    with engine.connect() as conn:
        holders = _lock_holders(conn)
    return (
        f"could not empty the tables in {EMPTYING_DEADLINE_S}s; sessions holding locks on them:\n"
        + "\n".join(holders)
    )


def _lock_holders(conn: Connection) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT DISTINCT a.pid, a.application_name, a.state, left(a.query, 200) AS query"
            " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.granted AND l.relation IS NOT NULL AND a.pid <> pg_backend_pid()"
            " AND a.datname = current_database()"
        )
    )
    return [f"  pid {r.pid} ({r.application_name or '?'}, {r.state}): {r.query}" for r in rows]


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()
