"""/readyz reflects the servers, not the API's connection pool (an API process of its own).

The API here has a Redis of its own, on a fixed socket path so that it can be restarted
where the API's pooled connection pointed, behind a TCP proxy that does what a restarted
server host does to the connections it had: nothing until the client next sends, then a
reset. (A local server's close would reach the pool first, and redis-py's pool replaces a
connection it sees closed; a reset arrives only as the answer to the probe itself.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from tests import web
from tests.e2e.conftest import START_TIMEOUT_S, free_port
from tests.e2e.support import PROBLEM_JSON
from tests.processes import running, service_env, wait_until
from tests.restartable_redis import RedisServer, ResettingProxy, proxy_to, redis_in_tmp


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    with redis_in_tmp("lsready") as server:
        yield server


@pytest.fixture(scope="module")
def proxy(own_redis: RedisServer) -> Iterator[ResettingProxy]:
    with proxy_to(own_redis.socket) as server:
        yield server


@pytest.fixture(scope="module")
def own_api(
    database_url: str, own_redis: RedisServer, proxy: ResettingProxy, tmp_path_factory
) -> Iterator[str]:
    """``leadscout api`` on the test database and ``own_redis`` (through the proxy); no worker."""
    port = free_port()
    log = Path(tmp_path_factory.mktemp("e2e-readiness")) / "api.log"
    env = service_env(database_url, proxy.url)
    with running(["api", "--host", "127.0.0.1", "--port", str(port)], env, log) as process:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert process.poll() is None, log.read_text()[-4000:]
            try:
                return web.get(url + "/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, START_TIMEOUT_S, "the API's /readyz to answer 200")
        yield url
        own_redis.start()  # as the module found it, for the API's shutdown


@pytest.fixture
def redis_up(own_redis: RedisServer) -> RedisServer:
    """``own_redis``, running at the start of the test whatever the last test did."""
    own_redis.start()
    return own_redis


class TestReadiness:
    """One probe tells whether PostgreSQL and Redis answer now."""

    def test_first_probe_after_a_redis_restart_is_ready(self, own_api, redis_up):
        """The probe before leaves a pooled connection, reset on its next use; still 200."""
        before = web.get(own_api + "/readyz", timeout=10)
        redis_up.stop()
        redis_up.start()

        after = web.get(own_api + "/readyz", timeout=10)

        assert (before.status_code, after.status_code) == (200, 200)
        assert after.json() == {"status": "ready", "checks": {"postgres": True, "redis": True}}

    def test_redis_down_answers_the_documented_503(self, own_api, redis_up):
        """503 problem+json ServiceUnavailable with the checks, valid against the document."""
        redis_up.stop()

        response = web.get(own_api + "/readyz", timeout=10)

        assert (response.status_code, response.headers["content-type"]) == (503, PROBLEM_JSON)
        problem = response.json()
        assert (problem["code"], problem["checks"]) == (
            "ServiceUnavailable",
            {"postgres": True, "redis": False},
        )
        jsonschema.validate(problem, documented_schema(own_api, "/readyz", "503", PROBLEM_JSON))


def documented_schema(base_url: str, path: str, status: str, media_type: str) -> dict[str, Any]:
    """The schema the API's own document gives this answer, with its components."""
    document = web.get(base_url + "/openapi.json", timeout=10).json()
    answer = document["paths"][path]["get"]["responses"][status]["content"][media_type]
    return {**answer["schema"], "components": document["components"]}
