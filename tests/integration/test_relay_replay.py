"""The relay after Redis lost its data (a restart without persistence): the rows it had
published recently are sent again, since no subscriber may have read their entries."""

from __future__ import annotations

import json

import pytest
from redis import Redis
from sqlalchemy import Engine, select, text, update

from tests.world import World, body
from worker.relay import MEMORY_KEY, relay_batch, replay_after_data_loss
from worker.store.tables import outbox, outbox_writes

STREAM = "leadscout:events"


@pytest.fixture
def world(engine: Engine, redis: Redis) -> World:
    world = World(engine, redis)
    world.channel(world.agent())
    return world


def initiate(world: World, count: int) -> None:
    template = world.template()
    for n in range(count):
        contact = world.contact(phone=f"+52155{n:08d}")
        assert world.initiate(**body(contact, template)).status == "succeeded"


def stream_ids(redis: Redis) -> list[str]:
    return [json.loads(fields[b"event"])["id"] for _, fields in redis.xrange(STREAM)]


def outbox_ids(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            str(i) for i in conn.execute(select(outbox.c.event_id).order_by(outbox.c.id)).scalars()
        ]


def published_ago(engine: Engine, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(outbox_writes).values(published_at=text(f"now() - interval '{seconds} seconds'"))
        )


class TestReplayAfterDataLoss:
    def test_nothing_is_replayed_while_redis_keeps_its_data(self, world, engine, redis):
        initiate(world, 2)
        assert replay_after_data_loss(engine, redis) == 0  # first look: sets the key
        relay_batch(engine, redis, STREAM)

        assert replay_after_data_loss(engine, redis) is None

        assert relay_batch(engine, redis, STREAM) == 0
        assert stream_ids(redis) == outbox_ids(engine)

    def test_after_a_restart_without_persistence_recent_rows_reach_the_new_stream(
        self, world, engine, redis
    ):
        initiate(world, 3)
        replay_after_data_loss(engine, redis)
        assert relay_batch(engine, redis, STREAM) == 3
        redis.flushall()  # what a restart without persistence leaves

        assert replay_after_data_loss(engine, redis) == 3

        assert relay_batch(engine, redis, STREAM) == 3
        assert stream_ids(redis) == outbox_ids(engine)
        assert redis.exists(MEMORY_KEY) == 1
        assert replay_after_data_loss(engine, redis) is None

    def test_rows_published_before_the_window_and_unpublished_rows_are_left_alone(
        self, world, engine, redis
    ):
        initiate(world, 2)
        relay_batch(engine, redis, STREAM)
        published_ago(engine, 1000)
        initiate(world, 1)  # not published yet: the next batch sends it anyway
        redis.flushall()

        assert replay_after_data_loss(engine, redis, window_s=900) == 0

        assert relay_batch(engine, redis, STREAM) == 1
        assert stream_ids(redis) == outbox_ids(engine)[-1:]
