"""API keys (SPEC 4, 8): rotation through the real CLI, and no key in any process's output."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from sqlalchemy import Engine

from tests.e2e.conftest import Stack
from tests.processes import LEADSCOUT, service_env
from worker.store import workspaces

# The API hears the revocation over Redis pub/sub at once; this leaves room for a busy host.
REVOKED_WITHIN_S = 2.0
FAKE_KEY = "lsk_" + "x" * 43  # shaped like a key, belongs to nobody


class Cli:
    """``python -m leadscout ...`` on the stack's servers; keeps every run's stderr."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.env = service_env(database_url, redis_url)
        self.stderr: list[str] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*LEADSCOUT, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        self.stderr.append(done.stderr)
        return done

    def rotate(self, workspace_id: str) -> str:
        done = self.run("workspace", "rotate-key", "--workspace", workspace_id)
        assert done.returncode == 0, done.stderr
        rotated = json.loads(done.stdout)
        assert list(rotated) == ["workspaceId", "apiKey"]
        assert rotated["workspaceId"] == workspace_id
        return str(rotated["apiKey"])


@pytest.fixture
def cli(database_url: str, redis_url: str) -> Cli:
    return Cli(database_url, redis_url)


def create(engine: Engine, name: str) -> tuple[str, str]:
    """A workspace and its key, made in-process (`workspace create` is tested elsewhere)."""
    with engine.begin() as conn:
        workspace_id, api_key = workspaces.create(conn, name)
    return str(workspace_id), api_key


def stats(client: httpx.Client, workspace_id: str, api_key: str) -> int:
    """The status of a read that any valid key of the workspace may make."""
    path = f"/v1/workspaces/{workspace_id}/leadscout/campaigns/spring/stats"
    return client.get(path, headers={"X-API-Key": api_key}).status_code


def seconds_until_refused(client: httpx.Client, workspace_id: str, api_key: str) -> float:
    """Polls with ``api_key`` until it gets 401; fails if that takes more than REVOKED_WITHIN_S."""
    started = time.monotonic()
    while (status := stats(client, workspace_id, api_key)) != 401:
        assert status == 200, status
        if time.monotonic() - started > REVOKED_WITHIN_S:
            pytest.fail(f"the old key still answered {status} after {REVOKED_WITHIN_S} s")
        time.sleep(0.05)
    return time.monotonic() - started


class TestRotateKey:
    """`workspace rotate-key`: the new key works at once, the old one gets 401 within seconds."""

    def test_rotation_replaces_the_key_in_every_running_api(
        self, cli: Cli, client: httpx.Client, engine: Engine
    ):
        workspace_id, old_key = create(engine, "rotating")
        other_id, other_key = create(engine, "bystander")
        # Both keys are now in the API's 30 s cache.
        assert [stats(client, workspace_id, old_key), stats(client, other_id, other_key)] == [
            200,
            200,
        ]

        new_key = cli.rotate(workspace_id)

        assert new_key not in (old_key, other_key)
        assert stats(client, workspace_id, new_key) == 200
        assert seconds_until_refused(client, workspace_id, old_key) < REVOKED_WITHIN_S
        assert [stats(client, workspace_id, new_key), stats(client, other_id, other_key)] == [
            200,
            200,
        ]

    def test_an_unknown_workspace_is_one_line_and_exit_code_1(self, cli: Cli, engine: Engine):
        missing = str(uuid4())

        done = cli.run("workspace", "rotate-key", "--workspace", missing)

        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == f"leadscout: workspace {missing} does not exist\n"


class TestKeysNeverLogged:
    """After keys were created, used, refused and rotated, no process printed any of them."""

    def test_no_key_in_any_log_or_cli_stderr(
        self, cli: Cli, client: httpx.Client, stack: Stack, engine: Engine
    ):
        workspace_id, old_key = create(engine, "logged")
        base = f"/v1/workspaces/{workspace_id}/leadscout"
        initiation = {"contactId": str(uuid4()), "template": {"templateId": str(uuid4())}}
        answers = [
            client.post(base + "/outbound", json=initiation, headers={"X-API-Key": old_key}),
            client.get(base + "/commands/nope", headers={"X-API-Key": old_key}),
            client.get(base + "/commands/nope", headers={"X-API-Key": FAKE_KEY}),
            client.post(
                f"/v1/workspaces/{uuid4()}/leadscout/outbound", headers={"X-API-Key": old_key}
            ),
        ]
        new_key = cli.rotate(workspace_id)
        seconds_until_refused(client, workspace_id, old_key)
        answers.append(client.get(base + "/commands/nope", headers={"X-API-Key": new_key}))

        # The initiation ran through the worker (TemplateNotFound), so the worker, relay and
        # reporter all had their turn.
        assert [a.status_code for a in answers] == [404, 404, 401, 403, 404]
        assert answers[0].json()["code"] == "TemplateNotFound"
        outputs = {path.name: path.read_text(errors="replace") for path in logs(stack.logs)}
        outputs |= {f"cli stderr {i}": text for i, text in enumerate(cli.stderr)}
        assert {"api.log", "worker.log", "relay.log", "reporter.log"} <= set(outputs)
        leaks = {
            (name, key[:8])
            for name, text in outputs.items()
            for key in (old_key, new_key, FAKE_KEY)
            if key in text
        }
        assert leaks == set()


def logs(directory: Path) -> list[Path]:
    return sorted(path for path in directory.rglob("*") if path.is_file())
