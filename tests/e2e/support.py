"""What the end-to-end tests share: a workspace-bound HTTP client and exact checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import Engine, Table, func, select

from tests.world import World

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
STREAM = "leadscout:events"
PROBLEM_JSON = "application/problem+json"
RENDERED = "Hola Luis, soy Ana de Acme"


def is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(UUID(value)) == value
    except ValueError:
        return False


def is_rfc3339(value: object) -> bool:
    return isinstance(value, str) and RFC3339.match(value) is not None


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with this status and code; returns the body for further checks."""
    assert (response.status_code, response.headers["content-type"]) == (status, PROBLEM_JSON), (
        response.text
    )
    problem = response.json()
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert all(isinstance(problem[name], str) for name in ("type", "title", "detail")), problem
    return problem


def count(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@dataclass
class Api:
    """The HTTP API as one workspace sees it, with its own key."""

    client: httpx.Client
    world: World

    @property
    def base(self) -> str:
        return f"/v1/workspaces/{self.world.workspace_id}/leadscout"

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-API-Key": self.world.api_key, **extra}

    def initiate(self, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(
            self.base + "/outbound", json=body, headers=self.headers(**(headers or {}))
        )

    def created(self, body: Any) -> dict[str, Any]:
        """The 200 body of an initiation that must succeed."""
        response = self.initiate(body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get(self, path: str) -> httpx.Response:
        return self.client.get(self.base + path, headers=self.headers())

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return self.client.post(self.base + path, json=body, headers=self.headers())

    def conversation(self, conversation_id: str) -> httpx.Response:
        return self.get(f"/conversations/{conversation_id}")

    def handoff(self, conversation_id: str, body: Any) -> httpx.Response:
        return self.post(f"/conversations/{conversation_id}/handoff", body)

    def close(self, conversation_id: str) -> httpx.Response:
        return self.post(f"/conversations/{conversation_id}/close")


@dataclass(frozen=True)
class Catalog:
    """The smallest workspace that can initiate: one agent on one channel, a template, a lead."""

    agent: UUID
    channel: UUID
    template: UUID
    contact: UUID


def minimal_catalog(world: World, **channel_fields: Any) -> Catalog:
    agent = world.agent()
    return Catalog(agent, world.channel(agent, **channel_fields), world.template(), world.contact())
