"""Learning a command's outcome without polling: one Redis pattern subscription per process.

Workers PUBLISH the outcome on ``leadscout:outcome:<commandId>`` right after
their commit. A waiter registers before the command is published, so the
notification cannot slip past it; when the wait runs out, one database read
settles it (a missed notification costs a 202, never a wrong answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from uuid import UUID

import structlog
from redis.asyncio import Redis

from worker.tasks import OUTCOME_CHANNEL_PREFIX as CHANNEL_PREFIX

logger = structlog.get_logger(__name__)


def channel(command_id: UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{command_id}"


class OutcomeListener:
    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

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

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._ready.clear()
                logger.warning("outcomes.listener_reconnecting", error=type(exc).__name__)
                await asyncio.sleep(0.5)

    async def _listen(self) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.psubscribe(CHANNEL_PREFIX + "*")
            self._ready.set()
            async for message in pubsub.listen():
                if message["type"] == "pmessage":
                    self._deliver(message["channel"].decode(), message["data"])

    def _deliver(self, name: str, data: bytes) -> None:
        for future in self._waiters.pop(name, []):
            if not future.done():
                future.set_result(json.loads(data))

    @property
    def ready(self) -> bool:
        return self._ready.is_set()
