"""The real Celery worker process: many concurrent commands, duplicate messages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from schemas.commands import InitiateOutbound
from tests.processes import TEARDOWN_GRACE_S, running, service_env, wait_until
from tests.world import World, body
from worker import tasks
from worker.celery_app import use_broker
from worker.store.tables import commands, conversations, messages, outbox


@pytest.fixture(scope="module")
def worker_process(database_url: str, redis_url: str, tmp_path_factory) -> Iterator[None]:
    use_broker(redis_url)
    log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
    env = service_env(database_url, redis_url)
    with running(["worker", "--concurrency", "4"], env, log, grace_s=TEARDOWN_GRACE_S) as process:
        yield
        assert process.poll() is None, log.read_text()[-3000:]


@pytest.fixture
def world(engine: Engine, redis_url: str) -> World:
    from redis import Redis

    return World(engine, Redis.from_url(redis_url))


def finished(engine: Engine, wanted: int) -> bool:
    with engine.connect() as conn:
        done = conn.execute(
            select(func.count()).where(commands.c.status.in_(["succeeded", "failed"]))
        ).scalar_one()
    return done == wanted


def outcomes(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        rows = conn.execute(select(commands.c.status, commands.c.result, commands.c.error_code))
        return Counter(
            ("reused" if r.result["alreadyInitiated"] else "created") if r.result else r.error_code
            for r in rows
        )


def count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.mark.usefixtures("worker_process")
class TestCeleryWorkerProcesses:
    """Four worker processes fed 50 commands for one contact and channel open one conversation."""

    def publish_all(self, world: World, **extra) -> list[InitiateOutbound]:
        channel = world.channel(world.agent())
        template, contact = world.template(), world.contact()
        sent = [
            world.command(**body(contact, template, providerChannelId=channel, **extra))
            for _ in range(50)
        ]
        for command in sent:
            tasks.publish(command)
        return sent

    def test_fifty_commands_give_one_created_and_49_rejected(self, world, engine):
        self.publish_all(world)
        wait_until(lambda: finished(engine, 50), 90, "50 finished commands")
        assert outcomes(engine) == {"created": 1, "ActiveConversationExists": 49}
        assert count(engine, conversations) == 1
        assert count(engine, outbox) == 50

    def test_fifty_force_send_commands_give_one_created_and_49_reused(self, world, engine):
        self.publish_all(world, forceSend=True)
        wait_until(lambda: finished(engine, 50), 90, "50 finished commands")
        assert outcomes(engine) == {"created": 1, "reused": 49}
        assert count(engine, conversations) == 1
        assert count(engine, messages) == 50

    def test_a_message_delivered_twice_has_one_effect(self, world, engine):
        world.channel(world.agent())
        command = world.command(**body(world.contact(), world.template()))
        tasks.publish(command)
        tasks.publish(command)
        wait_until(lambda: finished(engine, 1), 30, "the command to finish")
        wait_until(lambda: _queue_empty(world), 30, "both messages to be consumed")
        assert outcomes(engine) == {"created": 1}
        assert count(engine, conversations) == 1
        assert count(engine, messages) == 1
        assert count(engine, outbox) == 1


def _queue_empty(world: World) -> bool:
    return world.redis.llen("leadscout") == 0 and not world.redis.hlen("unacked")
