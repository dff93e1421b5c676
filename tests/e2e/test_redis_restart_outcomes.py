"""Sync initiations after a Redis restart are answered by the outcome notification again.

An API and a worker of their own on a Redis that the test restarts (without persistence).
The API reaches it through the proxy of test_readiness.py, which stays silent on the
connections it had until the client next sends: what a restarted server host does. Its
outcome subscription only reads, so without a heartbeat it would never learn that it is
deaf, and every sync initiation would wait out LEADSCOUT_SYNC_WAIT_S before its 200.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import START_TIMEOUT_S, free_port
from tests.e2e.support import Api, Catalog
from tests.processes import running, service_env, wait_until
from tests.restartable_redis import RedisServer, ResettingProxy, proxy_to, redis_in_tmp
from tests.world import World, body

SYNC_WAIT_S = 10.0
PROMPT_S = SYNC_WAIT_S / 2  # a notification heard answers in well under a second
ASYNC = {"Prefer": "respond-async"}

pytestmark = pytest.mark.slow


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_in_tmp("lsrr") as server:
        yield server


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[ResettingProxy]:
    with proxy_to(own_redis.socket) as server:
        yield server


@pytest.fixture
def restart_api(
    database_url: str, own_redis: RedisServer, proxy: ResettingProxy, world: World, tmp_path: Path
) -> Iterator[Api]:
    """The API through the proxy, the worker straight on the socket (it sees the restart)."""
    port = free_port()
    api_env = service_env(database_url, proxy.url, LEADSCOUT_SYNC_WAIT_S=str(SYNC_WAIT_S))
    worker_env = service_env(database_url, own_redis.url)
    with (
        running(["api", "--port", str(port)], api_env, tmp_path / "api.log") as api,
        running(["worker", "--concurrency", "1"], worker_env, tmp_path / "worker.log") as worker,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
    ):

        def ready() -> bool:
            assert api.poll() is None, (tmp_path / "api.log").read_text()[-4000:]
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
            try:
                return client.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, START_TIMEOUT_S, "the API's /readyz to answer 200")
        yield Api(client, world)


def finished_async(api: Api, catalog: Catalog, world: World) -> str:
    """Accepts an async initiation (retrying 503s) and waits for it to finish; its status."""
    deadline = time.monotonic() + START_TIMEOUT_S
    request = body(world.contact(), catalog.template)
    while (accepted := api.initiate(request, headers=ASYNC)).status_code == 503:
        assert time.monotonic() < deadline, accepted.text
        time.sleep(0.2)
    assert accepted.status_code == 202, accepted.text
    while (
        status := api.client.get(accepted.json()["statusUrl"], headers=api.headers()).json()[
            "status"
        ]
    ) not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, f"command still {status}"
        time.sleep(0.1)
    return str(status)


def timed_sync(api: Api, catalog: Catalog, world: World) -> tuple[int, float]:
    started = time.monotonic()
    answer = api.initiate(body(world.contact(), catalog.template))
    return answer.status_code, time.monotonic() - started


class TestOutcomesAfterRedisRestart:
    """The API's outcome subscription resubscribes: a sync 200 comes as fast as before."""

    def test_sync_initiation_is_answered_promptly_after_a_restart(
        self, restart_api: Api, own_redis: RedisServer, catalog: Catalog, world: World
    ):
        assert finished_async(restart_api, catalog, world) == "succeeded"  # the worker is up
        before = timed_sync(restart_api, catalog, world)

        own_redis.restart()
        assert finished_async(restart_api, catalog, world) == "succeeded"  # ... and back
        after = timed_sync(restart_api, catalog, world)

        assert (before[0], after[0]) == (200, 200)
        assert (before[1] < PROMPT_S, after[1] < PROMPT_S) == (True, True), (before, after)
