"""Batch intake when publishing fails (SPEC 4.3): 503 while nothing left, 202 once some did."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import Engine, select

from api_shim import batch_intake
from api_shim.problems import ApiProblem
from schemas.batches import InitiateOutboundBatchRequest
from schemas.errors import ErrorCode
from tests.world import World
from worker import tasks
from worker.store.tables import batches, commands

KEY = "campaign-503"
BROKER_DOWN = [
    BrokerOperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    RedisConnectionError("Connection closed by server."),
]


@pytest.fixture
def world(engine: Engine, redis) -> World:
    return World(engine, redis)


def raw_body(items: int) -> dict[str, Any]:
    return {
        "campaignId": "spring",
        "defaults": {"template": {"templateId": str(uuid4())}},
        "items": [{"contactId": str(uuid4())} for _ in range(items)],
    }


def accept(engine: Engine, world: World, raw: dict[str, Any]) -> dict[str, Any]:
    body = InitiateOutboundBatchRequest.model_validate(raw)
    return batch_intake.accept(engine, world.workspace_id, raw, body, KEY)


def publishing(
    sent: list[list[UUID]], fail_at: int | None = None, error: Exception = BROKER_DOWN[0]
) -> Callable[[Sequence[UUID]], None]:
    """A ``tasks.publish_chunk`` that records each call, and raises ``error`` on call
    number ``fail_at`` (from 0)."""

    def publish_chunk(command_ids: Sequence[UUID]) -> None:
        if len(sent) == fail_at:
            raise error
        sent.append(list(command_ids))

    return publish_chunk


def stored(engine: Engine) -> tuple[set[UUID], set[UUID]]:
    """The batch ids and the command ids."""
    with engine.connect() as conn:
        return (
            set(conn.execute(select(batches.c.id)).scalars()),
            set(conn.execute(select(commands.c.id)).scalars()),
        )


class TestPublished:
    """Every accepted command is published once, in chunks of at most CHUNK_SIZE."""

    def test_4500_commands_leave_in_three_chunks_after_the_commit(self, engine, world, monkeypatch):
        sent: list[list[UUID]] = []
        monkeypatch.setattr(tasks, "publish_chunk", publishing(sent))

        answer = accept(engine, world, raw_body(4500))

        batch_ids, command_ids = stored(engine)
        assert (answer["accepted"], batch_ids) == (4500, {UUID(answer["batchId"])})
        assert [len(chunk) for chunk in sent] == [2000, 2000, 500]
        assert {command_id for chunk in sent for command_id in chunk} == command_ids

    def test_a_replay_publishes_nothing(self, engine, world, monkeypatch):
        sent: list[list[UUID]] = []
        monkeypatch.setattr(tasks, "publish_chunk", publishing(sent))
        raw = raw_body(3)
        first = accept(engine, world, raw)

        assert accept(engine, world, raw) == first
        assert len(sent) == 1


class TestBrokerDown:
    """Down before the first chunk: 503 and nothing kept. Down later: kept, and 202."""

    @pytest.mark.parametrize("error", BROKER_DOWN, ids=lambda e: type(e).__name__)
    def test_503_and_nothing_kept_when_no_chunk_left(self, engine, world, monkeypatch, error):
        monkeypatch.setattr(tasks, "publish_chunk", publishing([], fail_at=0, error=error))

        with pytest.raises(ApiProblem) as refused:
            accept(engine, world, raw_body(3))

        assert (refused.value.code, refused.value.status) == (ErrorCode.SERVICE_UNAVAILABLE, 503)
        assert stored(engine) == (set(), set())

    def test_a_retry_with_the_same_key_is_a_new_batch(self, engine, world, monkeypatch):
        raw = raw_body(3)
        monkeypatch.setattr(tasks, "publish_chunk", publishing([], fail_at=0))
        with pytest.raises(ApiProblem):
            accept(engine, world, raw)
        sent: list[list[UUID]] = []
        monkeypatch.setattr(tasks, "publish_chunk", publishing(sent))

        answer = accept(engine, world, raw)

        assert answer["accepted"] == 3
        assert stored(engine)[0] == {UUID(answer["batchId"])}
        assert len(sent[0]) == 3

    def test_everything_kept_and_202_once_a_chunk_left(self, engine, world, monkeypatch):
        sent: list[list[UUID]] = []
        monkeypatch.setattr(tasks, "publish_chunk", publishing(sent, fail_at=1))

        answer = accept(engine, world, raw_body(2500))

        batch_ids, command_ids = stored(engine)
        assert (answer["accepted"], batch_ids) == (2500, {UUID(answer["batchId"])})
        assert len(command_ids) == 2500
        assert [len(chunk) for chunk in sent] == [2000]


class TestPublishingBug:
    """Any other exception propagates (a 500, not a 503) and keeps the rows."""

    def test_the_exception_propagates_and_the_rows_stay(self, engine, world, monkeypatch):
        failing = publishing([], fail_at=0, error=ValueError("not JSON serializable"))
        monkeypatch.setattr(tasks, "publish_chunk", failing)

        with pytest.raises(ValueError, match="not JSON serializable"):
            accept(engine, world, raw_body(3))

        batch_ids, command_ids = stored(engine)
        assert (len(batch_ids), len(command_ids)) == (1, 3)
