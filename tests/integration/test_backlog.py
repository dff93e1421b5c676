"""A worker that fell behind works the single-initiation backlog off in chunks: each single
task takes along its workspace's single commands that waited in the queue longer than
``handlers.BACKLOG_AFTER``; their own tasks, when they come, change nothing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from uuid import UUID, uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select, text, update

from schemas.commands import InitiateOutbound
from tests.world import World, body
from worker import handlers, tasks
from worker.celery_app import use_broker
from worker.store import batches
from worker.store.batches import NewBatch
from worker.store.tables import commands, conversations, outbox


@pytest.fixture
def world(engine: Engine, redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> World:
    use_broker(redis_url)
    world = World(engine, redis)
    monkeypatch.setattr(tasks, "handler_deps", lambda: world.deps)
    monkeypatch.setattr(tasks, "redis_client", lambda: world.redis)
    return world


def waited(engine: Engine, commands_: Sequence[InitiateOutbound], ms: int) -> None:
    """Moves the commands' creation ``ms`` milliseconds into the past."""
    with engine.begin() as conn:
        conn.execute(
            update(commands)
            .where(commands.c.id.in_([c.command_id for c in commands_]))
            .values(created_at=func.now() - text(f"interval '{ms} milliseconds'"))
        )


def statuses(engine: Engine, commands_: Sequence[InitiateOutbound]) -> list[str]:
    with engine.connect() as conn:
        by_id = dict(
            conn.execute(
                select(commands.c.id, commands.c.status).where(
                    commands.c.id.in_([c.command_id for c in commands_])
                )
            ).all()
        )
    return [by_id[c.command_id] for c in commands_]


def count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def singles(world: World, n: int, channel: UUID, template: UUID) -> list[InitiateOutbound]:
    return [
        world.command(**body(contact, template, providerChannelId=channel))
        for contact in world.contacts(n)
    ]


class TestTakingTheBacklog:
    def test_one_task_finishes_the_commands_that_waited_and_announces_each(self, world, engine):
        channel, template = world.channel(world.agent()), world.template()
        first, *behind = singles(world, 6, channel, template)
        waited(engine, behind, ms=500)
        listener = world.redis.pubsub()
        listener.psubscribe(tasks.OUTCOME_CHANNEL_PREFIX + "*")
        listener.get_message(timeout=1)  # the subscription's confirmation

        tasks.initiate_outbound.apply(args=[first.to_message()]).get()

        assert statuses(engine, [first, *behind]) == ["succeeded"] * 6
        assert (count(engine, conversations), count(engine, outbox)) == (6, 6)
        announced = [listener.get_message(timeout=1) for _ in range(6)]
        assert sorted(m["channel"].decode() for m in announced if m) == sorted(
            tasks.OUTCOME_CHANNEL_PREFIX + str(c.command_id) for c in [first, *behind]
        )
        assert {json.loads(m["data"])["status"] for m in announced if m} == {"succeeded"}

    def test_their_own_tasks_later_change_nothing(self, world, engine):
        channel, template = world.channel(world.agent()), world.template()
        first, *behind = singles(world, 4, channel, template)
        waited(engine, behind, ms=500)
        tasks.initiate_outbound.apply(args=[first.to_message()]).get()

        for command in behind:
            tasks.initiate_outbound.apply(args=[command.to_message()]).get()

        assert statuses(engine, [first, *behind]) == ["succeeded"] * 4
        assert (count(engine, conversations), count(engine, outbox)) == (4, 4)

    def test_commands_queued_for_less_than_the_threshold_are_left_to_their_tasks(
        self, world, engine
    ):
        channel, template = world.channel(world.agent()), world.template()
        first, *fresh = singles(world, 3, channel, template)
        waited(engine, [first, *fresh], ms=-60_000)  # created "in the future": never waited

        tasks.initiate_outbound.apply(args=[first.to_message()]).get()

        assert statuses(engine, [first, *fresh]) == ["succeeded", "accepted", "accepted"]

    def test_only_single_commands_of_the_same_workspace_are_taken(self, world, engine):
        channel, template = world.channel(world.agent()), world.template()
        first, behind = singles(world, 2, channel, template)
        other = World(engine, world.redis, name="Other")
        other_command = singles(other, 1, other.channel(other.agent()), other.template())[0]
        item = InitiateOutbound.model_validate(
            {
                "commandId": str(uuid4()),
                "workspaceId": str(world.workspace_id),
                "request": body(world.contact(), template, providerChannelId=channel),
            }
        )
        batch = NewBatch(uuid4(), world.workspace_id, "spring", [item], [], "h")
        with engine.begin() as conn:
            assert batches.record(conn, batch, None) is None
        waited(engine, [behind, other_command, item], ms=500)

        tasks.initiate_outbound.apply(args=[first.to_message()]).get()

        assert statuses(engine, [first, behind, other_command, item]) == [
            "succeeded",
            "succeeded",
            "accepted",
            "accepted",
        ]

    def test_a_contact_twice_in_the_backlog_gets_one_conversation_and_one_reuse(
        self, world, engine
    ):
        channel, template = world.channel(world.agent()), world.template()
        contact = world.contact()
        first = world.command(**body(world.contact(phone="+5215500000001"), template))
        twice = [
            world.command(**body(contact, template, providerChannelId=channel, forceSend=True))
            for _ in range(2)
        ]
        waited(engine, twice[:1], ms=600)
        waited(engine, twice[1:], ms=500)

        tasks.initiate_outbound.apply(args=[first.to_message()]).get()

        assert statuses(engine, [first, *twice]) == ["succeeded"] * 3
        with engine.connect() as conn:
            results = [
                conn.execute(
                    select(commands.c.result).where(commands.c.id == c.command_id)
                ).scalar_one()
                for c in twice
            ]
        assert [r["alreadyInitiated"] for r in results] == [False, True]
        assert results[0]["conversation"]["id"] == results[1]["conversation"]["id"]
        assert count(engine, conversations) == 2


def test_the_backlog_limit_bounds_one_chunk(world, engine, monkeypatch):
    monkeypatch.setattr(handlers, "BACKLOG_LIMIT", 3)
    channel, template = world.channel(world.agent()), world.template()
    first, *behind = singles(world, 6, channel, template)
    for n, command in enumerate(behind):  # oldest first, no two alike
        waited(engine, [command], ms=500 - 10 * n)

    tasks.initiate_outbound.apply(args=[first.to_message()]).get()

    assert statuses(engine, [first, *behind]) == ["succeeded"] * 4 + ["accepted"] * 2
