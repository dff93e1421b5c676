"""A pub/sub subscription hears again after Redis restarts behind a proxy that stays silent.

The proxy (tests/e2e/test_readiness.py) does what a restarted server host does to the
connections it had: nothing until the client next sends, then a reset. A subscriber that
only waits for messages never sends, so without its heartbeat it would wait forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine

from api_shim.outcomes import OutcomeListener, outcomes_in
from api_shim.subscription import Subscription
from tests.restartable_redis import RedisServer, ResettingProxy, proxy_to, redis_in_tmp
from tests.world import World

CHANNEL = "test:subscription"
RECOVERY_LIMIT_S = 6.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_in_tmp("lssub") as server:
        yield server


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[ResettingProxy]:
    with proxy_to(own_redis.socket) as server:
        yield server


class Heard:
    """What the subscription delivered, and how often it (re)subscribed."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.subscribed = 0

    def on_message(self, channel: str, data: bytes) -> None:
        self.messages.append(data)

    async def on_subscribed(self) -> None:
        self.subscribed += 1


async def publish_until_heard(socket: str, heard: Heard, data: bytes, limit_s: float) -> float:
    """Publishes ``data`` every 0.1 s until the subscription hears it; returns the seconds taken."""
    started = time.monotonic()
    while data not in heard.messages:
        if time.monotonic() - started > limit_s:
            raise AssertionError(f"not heard within {limit_s} s; heard {heard.messages}")
        with Redis(unix_socket_path=socket) as publisher:
            publisher.publish(CHANNEL, data)
        await asyncio.sleep(0.1)
    return time.monotonic() - started


class TestRedisRestart:
    """After a restart the subscription resubscribes by itself and runs its catch-up."""

    def test_heard_again_within_seconds_and_caught_up_once(self, own_redis, proxy):
        heard = Heard()

        async def scenario() -> float:
            subscription = Subscription(
                proxy.url,
                "test",
                heard.on_message,
                channels=[CHANNEL],
                on_subscribed=heard.on_subscribed,
            )
            await subscription.start()
            try:
                await publish_until_heard(own_redis.socket, heard, b"before", 2)
                own_redis.restart()
                return await publish_until_heard(
                    own_redis.socket, heard, b"after", RECOVERY_LIMIT_S
                )
            finally:
                await subscription.stop()

        recovery_s = asyncio.run(scenario())

        assert (heard.messages[0], heard.messages[-1], heard.subscribed) == (b"before", b"after", 2)
        assert recovery_s < RECOVERY_LIMIT_S


class TestOutcomeCatchUp:
    """Subscribed again, the outcome listener asks the database about the commands awaited."""

    def test_a_waiter_gets_the_outcome_published_while_it_was_away(self, own_redis, proxy):
        command_id = uuid4()
        outcome = {"status": "succeeded", "result": {"conversation": "c"}, "error": None}
        asked: list[list[UUID]] = []

        async def recheck(command_ids: Collection[UUID]) -> dict[UUID, dict[str, Any]]:
            asked.append(list(command_ids))
            return {command_id: outcome}

        async def scenario() -> dict[str, Any]:
            listener = OutcomeListener(proxy.url, recheck=recheck)
            await listener.start()
            try:
                waiter = listener.expect(command_id)
                own_redis.restart()  # the notification, if any, went nowhere
                return await asyncio.wait_for(waiter, RECOVERY_LIMIT_S)
            finally:
                await listener.stop()

        assert asyncio.run(scenario()) == outcome
        assert asked == [[command_id]]  # not at the first subscription: nothing was awaited


class TestOutcomesInTheDatabase:
    """The catch-up's database read: the outcome message of each finished command, only those."""

    def test_finished_commands_only(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        finished = world.initiate(contactId=str(uuid4()), template={"templateId": str(uuid4())})
        waiting = world.command(contactId=str(uuid4()), template={"templateId": str(uuid4())})

        found = asyncio.run(outcomes_in(engine)([finished.command_id, waiting.command_id, uuid4()]))

        assert found == {
            finished.command_id: {
                "status": "failed",
                "result": None,
                "error": finished.error,
            }
        }
        assert finished.error["code"] == "TemplateNotFound"
