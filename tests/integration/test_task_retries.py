"""The Celery task's retry policy: infrastructure failures are retried, never recorded.

Each test runs ``leadscout.initiate_outbound`` eagerly (``Task.apply``), so a retry runs the
task again at once; the ``task_retry`` signal records the retry and removes the obstacle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from celery.signals import task_retry
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from tests.world import World, body, make_deps
from worker import handlers, tasks
from worker.locks import LockWaitTimeout
from worker.store import fences
from worker.store.tables import commands, conversations

LOCK_WAIT_MS = 50


def command_row(engine: Engine, command_id: UUID) -> tuple[str, Any, Any]:
    with engine.connect() as conn:
        row = conn.execute(
            select(commands.c.status, commands.c.result, commands.c.error).where(
                commands.c.id == command_id
            )
        ).one()
    return (row.status, row.result, row.error)


class RetryWatch:
    """Records each retry the task asks for, with its command's row at that moment."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seen: list[tuple[str, tuple[str, Any, Any]]] = []
        self.then: Callable[[], object] = lambda: None

    def __call__(self, request: Any, reason: Any, **_: Any) -> None:
        command_id = UUID(request.args[0]["commandId"])
        self.seen.append((type(reason.exc).__name__, command_row(self.engine, command_id)))
        self.then()


@pytest.fixture
def world(engine: Engine, redis: Redis, monkeypatch: pytest.MonkeyPatch) -> World:
    """A workspace; the task's dependencies are this test's, with a short lock wait."""
    monkeypatch.setattr(
        tasks, "handler_deps", lambda: make_deps(engine, redis, wait_ms=LOCK_WAIT_MS)
    )
    monkeypatch.setattr(tasks, "redis_client", lambda: redis)
    return World(engine, redis)


@pytest.fixture
def retries(engine: Engine) -> Iterator[RetryWatch]:
    watch = RetryWatch(engine)
    task_retry.connect(watch, sender=tasks.initiate_outbound, weak=False)
    yield watch
    task_retry.disconnect(watch, sender=tasks.initiate_outbound)


def run_task(world: World, **extra: Any) -> tuple[UUID, str]:
    """Records a command for the catalog's contact and runs the task on it eagerly."""
    command = world.command(**body(world.contact(), world.template(), **extra))
    result = tasks.initiate_outbound.apply(args=[command.model_dump(mode="json")])
    assert result.traceback is None, result.traceback
    return command.command_id, result.state


def conversation_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(conversations)).scalar_one())


class TestRetryPolicy:
    """The task retries exactly the infrastructure failures, with backoff and no limit."""

    def test_autoretry_for_names_exactly_the_infrastructure_failures(self):
        assert tasks.initiate_outbound.autoretry_for == (
            OperationalError,
            RedisError,
            LockWaitTimeout,
            handlers.SelectionContention,
        )

    def test_retries_forever_with_jittered_backoff(self):
        task = tasks.initiate_outbound
        assert (
            task.max_retries,
            task.retry_backoff,
            task.retry_backoff_max,
            task.retry_jitter,
        ) == (
            None,
            0.2,
            30,
            True,
        )


class TestLockWaitTimeout:
    """A channel lock held past the bounded wait makes the task retry, not fail the command."""

    def test_retried_with_the_command_unfinished_then_done(self, world, engine, redis, retries):
        channel = world.channel(world.agent())
        held = redis.lock(f"leadscout:lock:channel:{channel}", timeout=30)
        assert held.acquire(blocking=False)
        retries.then = held.release

        command_id, state = run_task(world)

        assert retries.seen == [("LockWaitTimeout", ("processing", None, None))]
        assert state == "SUCCESS"
        assert command_row(engine, command_id)[0] == "succeeded"
        assert conversation_count(engine) == 1


class TestSelectionContention:
    """A channel choice that keeps changing under the task makes it retry, not fail."""

    def test_retried_with_the_command_unfinished_then_done(
        self, world, engine, retries, monkeypatch
    ):
        world.channel(world.agent())
        real_check = fences.check
        contended = threading.Event()
        contended.set()

        def check(conn: Any, tokens: dict[UUID, int]) -> None:
            if contended.is_set():
                raise fences.StaleFence()
            real_check(conn, tokens)

        monkeypatch.setattr(fences, "check", check)
        retries.then = contended.clear

        command_id, state = run_task(world)

        assert retries.seen == [("SelectionContention", ("processing", None, None))]
        assert state == "SUCCESS"
        assert command_row(engine, command_id)[0] == "succeeded"
        assert conversation_count(engine) == 1
