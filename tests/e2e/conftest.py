"""The whole service as real processes (API, worker, relay), started once for the package.

Tests talk HTTP to the API and read the Redis Stream; they never import the handlers. The
per-test ``engine`` fixture empties the tables; the ``redis`` fixture is not used here
because FLUSHDB would delete the broker's binding keys under the running worker.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from redis import Redis
from sqlalchemy import Engine

from core.embedded import start_redis
from tests import web
from tests.e2e.support import STREAM, Api, Catalog, minimal_catalog
from tests.processes import TEARDOWN_GRACE_S, running, service_env, stop_all, wait_until
from tests.servers import stop_throwaway_redis
from tests.world import World
from worker.store import workspaces

START_TIMEOUT_S = 60


@dataclass
class Stack:
    base_url: str
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path
    worker_metrics_url: str

    def dead(self) -> dict[str, str]:
        """Name → log tail of every process that has exited."""
        return {
            name: self.tail(name)
            for name, process in self.processes.items()
            if process.poll() is not None
        }

    def tail(self, name: str, chars: int = 4000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def assert_alive(self) -> None:
        if dead := self.dead():
            pytest.fail(_report(dead), pytrace=False)


def _report(dead: dict[str, str]) -> str:
    return "\n".join(f"`leadscout {name}` died; log tail:\n{tail}" for name, tail in dead.items())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="package")
def stack(
    database_url: str, redis_url: str, session_engine: Engine, tmp_path_factory
) -> Iterator[Stack]:
    port, worker_metrics_port = free_port(), free_port()
    logs = Path(tmp_path_factory.mktemp("e2e"))
    env = service_env(database_url, redis_url, LEADSCOUT_SYNC_WAIT_S="10")
    # Only the worker serves metrics on a port of its own (the API has /metrics).
    worker_env = env | {"LEADSCOUT_METRICS_PORT": str(worker_metrics_port)}
    commands = {
        "api": (["api", "--host", "127.0.0.1", "--port", str(port)], env),
        "worker": (["worker", "--concurrency", "2"], worker_env),
        "relay": (["relay"], env),
        "reporter": (["reporter"], env),
    }
    with ExitStack() as started:
        processes = {
            name: started.enter_context(running(args, process_env, logs / f"{name}.log"))
            for name, (args, process_env) in commands.items()
        }
        stack = Stack(
            f"http://127.0.0.1:{port}", processes, logs, f"http://127.0.0.1:{worker_metrics_port}"
        )
        _wait_ready(stack)
        _wait_worker_answers(stack, session_engine)
        yield stack
        dead = stack.dead()
        # All at once, briefly: nothing after this looks at how they stop (the ExitStack
        # then finds them stopped).
        stop_all(processes.values(), TEARDOWN_GRACE_S)
    if dead:
        pytest.fail(_report(dead), pytrace=False)


def _wait_ready(stack: Stack) -> None:
    def ready() -> bool:
        if stack.processes["api"].poll() is not None:
            pytest.fail(_report({"api": stack.tail("api")}), pytrace=False)
        try:
            return web.get(stack.base_url + "/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, START_TIMEOUT_S, "the API's /readyz to answer 200")


def _wait_worker_answers(stack: Stack, engine: Engine) -> None:
    """One command through the whole path, so the first test doesn't pay the worker's start."""
    with engine.begin() as conn:
        workspace_id, api_key = workspaces.create(conn, "warm-up")
    body = {"contactId": str(uuid4()), "template": {"templateId": str(uuid4())}}
    with web.client(base_url=stack.base_url, headers={"X-API-Key": api_key}) as client:
        answer = client.post(
            f"/v1/workspaces/{workspace_id}/leadscout/outbound",
            json=body,
            headers={"Prefer": "respond-async"},
        )
        assert answer.status_code == 202, answer.text
        deadline = time.monotonic() + START_TIMEOUT_S
        while client.get(answer.json()["statusUrl"]).json()["status"] != "failed":
            stack.assert_alive()
            if time.monotonic() > deadline:
                pytest.fail(f"the worker did not answer:\n{stack.tail('worker')}", pytrace=False)
            time.sleep(0.1)


@pytest.fixture(scope="package")
def workerless_api(database_url: str, tmp_path_factory) -> Iterator[tuple[str, Callable[[], bool]]]:
    """A second API on the same database, with a Redis of its own that no worker consumes.

    Its commands are recorded but never processed, so its sync wait (0.5 s) always runs out.
    Started, not waited for (``workerless_api_url`` waits): its URL and its readiness check.
    """
    port = free_port()
    log = Path(tmp_path_factory.mktemp("e2e-workerless")) / "api.log"
    # Always an embedded Redis: LEADSCOUT_TEST_REDIS_URL would be the workers' own broker.
    with tempfile.TemporaryDirectory(prefix="lsredis", dir="/tmp") as tmp:
        lonely_server, lonely_redis = start_redis(Path(tmp))
        env = service_env(database_url, lonely_redis, LEADSCOUT_SYNC_WAIT_S="0.5")
        with running(["api", "--host", "127.0.0.1", "--port", str(port)], env, log) as process:
            url = f"http://127.0.0.1:{port}"

            def ready() -> bool:
                assert process.poll() is None, log.read_text()[-4000:]
                try:
                    return web.get(url + "/readyz", timeout=2).status_code == 200
                except httpx.TransportError:
                    return False

            yield url, ready
        stop_throwaway_redis(lonely_server)


@pytest.fixture(scope="package")
def workerless_api_url(workerless_api: tuple[str, Callable[[], bool]]) -> str:
    url, ready = workerless_api
    wait_until(ready, START_TIMEOUT_S, "the workerless API's /readyz to answer 200")
    return url


@pytest.fixture(scope="package", autouse=True)
def _workerless_api_early(request: pytest.FixtureRequest) -> None:
    """When the selected tests use both, starts the workerless API right after the stack, so
    that its ~2 s start runs beside the first tests instead of holding up the one needing it."""
    used = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    if {"stack", "workerless_api_url"} <= used:
        request.getfixturevalue("stack")
        request.getfixturevalue("workerless_api")


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    """A client on the API with no key; checks after the test that every process still runs."""
    stack.assert_alive()
    with web.client(base_url=stack.base_url, timeout=30) as http:
        yield http
    stack.assert_alive()


@pytest.fixture
def events(redis_url: str) -> Iterator[Redis]:
    """A Redis client on an empty event stream (only the stream: the broker's keys stay)."""
    redis = Redis.from_url(redis_url)
    redis.delete(STREAM)
    yield redis
    redis.close()


@pytest.fixture
def world(engine: Engine, redis_url: str) -> Iterator[World]:
    redis = Redis.from_url(redis_url)
    yield World(engine, redis)
    redis.close()


@pytest.fixture
def other_world(world: World) -> World:
    """A second workspace in the same database."""
    return World(world.engine, world.redis, name="Other")


@pytest.fixture
def api(client: httpx.Client, world: World) -> Api:
    return Api(client, world)


@pytest.fixture
def other_api(client: httpx.Client, other_world: World) -> Api:
    """The API as a second workspace sees it."""
    return Api(client, other_world)


@pytest.fixture
def catalog(world: World) -> Catalog:
    return minimal_catalog(world)
