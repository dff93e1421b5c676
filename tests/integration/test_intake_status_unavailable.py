"""A sync wait that runs out while PostgreSQL is down: the command was recorded and
published, so the answer is 202 accepted, never a 503 that says nothing was accepted
(found by the fault suite: a client told 503 retries, and initiates twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from api_shim.intake import Intake, Status
from api_shim.outcomes import OutcomeListener
from schemas.api import InitiateOutboundRequest
from schemas.commands import InitiateOutbound
from tests.integration.test_intake import publishing, stored
from tests.world import World, body
from worker import tasks


@pytest.fixture
def intake(engine: Engine, redis_url: str) -> Iterator[Intake]:
    listener = OutcomeListener(redis_url)  # never started: no outcome ever arrives
    yield Intake(engine, listener, sync_wait_s=0.1)
    asyncio.run(listener.stop())


def database_down(command_id: UUID) -> None:
    raise OperationalError("SELECT commands", {}, Exception("server closed the connection"))


def test_the_answer_is_202_accepted(intake, engine, redis, monkeypatch):
    world = World(engine, redis)
    sent: list[InitiateOutbound] = []
    monkeypatch.setattr(tasks, "publish", publishing(sent))
    monkeypatch.setattr(intake, "_find", database_down)
    raw = body(uuid4(), uuid4())
    request = InitiateOutboundRequest.model_validate(raw)

    status = asyncio.run(intake.submit(world.workspace_id, raw, request, None, wait=True))

    [command] = sent
    assert status == Status(command.command_id, "accepted")
    assert stored(engine) == [(str(command.command_id), "accepted", None)]
