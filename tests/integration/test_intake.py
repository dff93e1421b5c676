"""Command intake when publishing fails: only an unreachable broker is a 503 (SPEC 4.2)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import Engine, select

from api_shim.intake import Intake, Status
from api_shim.outcomes import OutcomeListener
from api_shim.problems import ApiProblem
from schemas.api import InitiateOutboundRequest
from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from tests.world import World, body
from worker import tasks
from worker.store.commands import take_backlog
from worker.store.tables import commands

KEY = "order-7"


@pytest.fixture
def intake(engine: Engine, redis_url: str) -> Iterator[Intake]:
    listener = OutcomeListener(redis_url)  # never started: these submits don't wait
    yield Intake(engine, listener, sync_wait_s=0.5)
    asyncio.run(listener.stop())


@pytest.fixture
def world(engine: Engine, redis) -> World:
    return World(engine, redis)


@pytest.fixture
def request_body() -> dict[str, Any]:
    return body(uuid4(), uuid4())


def submit(intake: Intake, world: World, raw: dict[str, Any], key: str | None) -> Status:
    request = InitiateOutboundRequest.model_validate(raw)
    return asyncio.run(intake.submit(world.workspace_id, raw, request, key, wait=False))


def publishing(outcome: Exception | list[InitiateOutbound]) -> Callable[[InitiateOutbound], None]:
    """A ``tasks.publish`` that raises ``outcome``, or appends what it sends to it."""

    def publish(command: InitiateOutbound) -> None:
        if isinstance(outcome, Exception):
            raise outcome
        outcome.append(command)

    return publish


def stored(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(commands.c.id, commands.c.status, commands.c.idempotency_key))
        return [(str(row.id), row.status, row.idempotency_key) for row in rows]


BROKER_DOWN = [
    BrokerOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    RedisConnectionError("Connection closed by server."),
    RedisTimeoutError("Timeout reading from socket"),
]


class TestBrokerUnavailable:
    """An unreachable broker answers 503 ServiceUnavailable and takes the command row back."""

    @pytest.mark.parametrize("error", BROKER_DOWN, ids=lambda e: type(e).__name__)
    def test_503_and_no_command_row(self, intake, world, engine, request_body, monkeypatch, error):
        monkeypatch.setattr(tasks, "publish", publishing(error))

        with pytest.raises(ApiProblem) as refused:
            submit(intake, world, request_body, KEY)

        assert (refused.value.code, refused.value.status) == (ErrorCode.SERVICE_UNAVAILABLE, 503)
        assert stored(engine) == []

    def test_a_retry_with_the_same_key_is_a_new_command(
        self, intake, world, engine, request_body, monkeypatch
    ):
        monkeypatch.setattr(tasks, "publish", publishing(BROKER_DOWN[0]))
        with pytest.raises(ApiProblem):
            submit(intake, world, request_body, KEY)
        sent: list[InitiateOutbound] = []
        monkeypatch.setattr(tasks, "publish", publishing(sent))

        status = submit(intake, world, request_body, KEY)

        assert status == Status(status.command_id, "accepted")
        assert [command.command_id for command in sent] == [status.command_id]
        assert stored(engine) == [(str(status.command_id), "accepted", KEY)]


class TestTakenWhileTheBrokerIsDown:
    """A worker behind on its queue takes waiting single commands from the table
    (``commands.take_backlog``): one it took while its publish was failing ran, or runs, so
    it is accepted, not refused."""

    def test_a_command_a_worker_took_is_accepted_and_kept(
        self, intake, world, engine, request_body, monkeypatch
    ):
        def taken_then_broker_down(command: InitiateOutbound) -> None:
            with engine.begin() as conn:
                taken = take_backlog(conn, world.workspace_id, timedelta(0), limit=32)
            assert [c.command_id for c in taken] == [command.command_id]
            raise BROKER_DOWN[0]

        monkeypatch.setattr(tasks, "publish", taken_then_broker_down)

        status = submit(intake, world, request_body, KEY)

        assert status == Status(status.command_id, "accepted")
        assert stored(engine) == [(str(status.command_id), "processing", KEY)]


class TestPublishingBug:
    """Any other exception from publishing propagates (a 500, not a 503) and keeps the row."""

    def test_the_exception_propagates_and_the_row_stays(
        self, intake, world, engine, request_body, monkeypatch
    ):
        monkeypatch.setattr(tasks, "publish", publishing(ValueError("not JSON serializable")))

        with pytest.raises(ValueError, match="not JSON serializable"):
            submit(intake, world, request_body, KEY)

        [(_, status, key)] = stored(engine)
        assert (status, key) == ("accepted", KEY)
