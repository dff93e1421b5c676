"""An API key that cannot be checked because PostgreSQL is unreachable: 503, not 500.

A real API process whose database URL points at a port where nothing listens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import START_TIMEOUT_S, free_port
from tests.e2e.support import PROBLEM_JSON, assert_problem
from tests.e2e.test_readiness import documented_schema
from tests.processes import running, service_env, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def databaseless_api(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/leadscout"
    env = service_env(nowhere, redis_url)
    with running(["api", "--port", str(port)], env, tmp_path / "api.log") as process:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, (tmp_path / "api.log").read_text()[-4000:]
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, START_TIMEOUT_S, "the API's /healthz to answer 200")
        yield url


class TestKeyLookupWithTheDatabaseDown:
    """The guard's key lookup fails: 503 ServiceUnavailable problem+json, as documented."""

    def test_503_service_unavailable(self, databaseless_api: str):
        path = f"/v1/workspaces/{uuid4()}/leadscout/commands/{uuid4()}"

        answer = httpx.get(databaseless_api + path, headers={"X-API-Key": "lsk_any"}, timeout=30)

        problem = assert_problem(answer, 503, "ServiceUnavailable")
        assert answer.headers["retry-after"] == "1"
        schema = documented_schema(
            databaseless_api,
            "/v1/workspaces/{workspaceId}/leadscout/commands/{commandId}",
            "503",
            PROBLEM_JSON,
        )
        jsonschema.validate(problem, schema)
