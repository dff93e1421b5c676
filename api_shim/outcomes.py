"""Learning a command's outcome without polling: one Redis pattern subscription per process.

Workers PUBLISH the outcome on ``leadscout:outcome:<commandId>`` right after
their commit. A waiter registers before the command is published, so the
notification cannot slip past it; when the wait runs out, one database read
settles it (a missed notification costs a 202, never a wrong answer). After a lost
connection the subscription comes back by itself and, once resubscribed, asks the
database about every command still awaited: a notification sent while it was away
costs nothing then.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any
from uuid import UUID

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from api_shim.subscription import Subscription
from worker.store import commands
from worker.tasks import OUTCOME_CHANNEL_PREFIX as CHANNEL_PREFIX

# Command ids → the outcome message of each one that has finished.
Recheck = Callable[[Collection[UUID]], Awaitable[dict[UUID, dict[str, Any]]]]


def channel(command_id: UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{command_id}"


class OutcomeListener:
    def __init__(self, redis_url: str, recheck: Recheck | None = None) -> None:
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._recheck = recheck
        self._subscription = Subscription(
            redis_url,
            "outcomes",
            self._deliver,
            patterns=[CHANNEL_PREFIX + "*"],
            on_subscribed=self._catch_up,
        )

    async def start(self) -> None:
        await self._subscription.start()

    async def stop(self) -> None:
        await self._subscription.stop()

    def expect(self, command_id: UUID) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel(command_id), []).append(future)
        return future

    def forget(self, command_id: UUID, future: asyncio.Future[dict[str, Any]]) -> None:
        waiters = self._waiters.get(channel(command_id), [])
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            self._waiters.pop(channel(command_id), None)

    def _deliver(self, name: str, data: bytes) -> None:
        self._resolve(name, json.loads(data))

    def _resolve(self, name: str, message: dict[str, Any]) -> None:
        for future in self._waiters.pop(name, []):
            if not future.done():
                future.set_result(message)

    async def _catch_up(self) -> None:
        awaited = [UUID(name.removeprefix(CHANNEL_PREFIX)) for name in self._waiters]
        if self._recheck is None or not awaited:
            return
        for command_id, message in (await self._recheck(awaited)).items():
            self._resolve(channel(command_id), message)

    @property
    def ready(self) -> bool:
        return self._subscription.ready


def outcomes_in(engine: Engine) -> Recheck:
    """A Recheck that reads the commands from the database."""

    def finished(command_ids: Collection[UUID]) -> dict[UUID, dict[str, Any]]:
        with engine.connect() as conn:
            stored = commands.find_many(conn, command_ids)
        return {
            row.id: {"status": row.status, "result": row.result, "error": row.error}
            for row in stored
            if row.finished
        }

    async def recheck(command_ids: Collection[UUID]) -> dict[UUID, dict[str, Any]]:
        return await run_in_threadpool(finished, command_ids)

    return recheck
