"""Fixtures of the fault-injection suite: servers of its own (so it may crash them), empty
tables and an empty Redis before each scenario, and the service as a ``FaultStack``.

Fixture names differ from the root conftest's (``database_url``, ``engine``...): overriding
a session fixture here would leave the root's session engine bound to the other database.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from redis import Redis
from sqlalchemy import Engine

from tests.conftest import empty_tables
from tests.faults.harness import FaultStack, OwnedPostgres, OwnedRedis, Servers
from tests.servers import fresh_database
from tests.world import World
from worker.store.db import make_engine
from worker.store.migrate import upgrade

# The suite's timings (SPEC 7 settings): a command untouched for 3 s is swept.
SWEEP_AFTER_S = 3.0
SETTINGS = {
    "LEADSCOUT_SWEEP_AFTER_S": str(SWEEP_AFTER_S),
    "LEADSCOUT_SYNC_WAIT_S": "2",
}


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[Servers]:
    """PostgreSQL and Redis for the suite: owned (restartable) unless the environment names
    servers, which are used as they are and never restarted."""
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lsfault", dir="/tmp")))
        postgres = None
        if server_url := os.environ.get("LEADSCOUT_TEST_DATABASE_URL"):
            database_url = stack.enter_context(fresh_database(server_url))
        else:
            # A server of its own: its maintenance database will do (fresh_database's
            # connection to drop it would not survive a restart).
            postgres = OwnedPostgres(tmp / "pg")
            stack.callback(postgres.close)
            database_url = postgres.url
        upgrade(database_url)
        redis = None
        if not (redis_url := os.environ.get("LEADSCOUT_TEST_REDIS_URL")):
            (tmp / "redis").mkdir()
            redis = OwnedRedis(tmp / "redis")
            stack.callback(redis.close)
            redis_url = redis.url
        yield Servers(database_url, redis_url, postgres, redis)


def needs_own(servers: Servers, *, postgres: bool = False, redis: bool = False) -> None:
    """Skips a scenario that restarts a server the suite does not own."""
    if postgres and servers.postgres is None:
        pytest.skip("restarts PostgreSQL: not with LEADSCOUT_TEST_DATABASE_URL")
    if redis and servers.redis is None:
        pytest.skip("restarts Redis: not with LEADSCOUT_TEST_REDIS_URL")


@pytest.fixture(scope="session")
def fault_session_engine(fault_servers: Servers) -> Iterator[Engine]:
    engine = make_engine(fault_servers.database_url, pool_size=5)
    yield engine
    engine.dispose()


@pytest.fixture
def fault_engine(fault_session_engine: Engine) -> Engine:
    """Empty tables, as every test starts with; a scenario's processes are stopped by then."""
    fault_session_engine.dispose()  # connections broken by an earlier PostgreSQL restart
    empty_tables(fault_session_engine)
    return fault_session_engine


@pytest.fixture
def fault_redis(fault_servers: Servers) -> Iterator[Redis]:
    client = Redis.from_url(fault_servers.redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def fault_world(fault_engine: Engine, fault_redis: Redis) -> World:
    return World(fault_engine, fault_redis, name="Faults")


@pytest.fixture
def fault_stack(
    fault_servers: Servers, fault_engine: Engine, fault_redis: Redis, tmp_path: Path
) -> Iterator[FaultStack]:
    """The five processes, not started yet: a scenario may change ``env`` first, then
    calls ``start()``. Stopped after the test, whatever it killed or restarted."""
    stack = FaultStack.standard(fault_servers, tmp_path, **SETTINGS)
    try:
        yield stack
    finally:
        stack.stop()
