"""A Redis pub/sub subscription that survives Redis restarts and silently dead connections.

A subscriber only reads, so a connection whose server vanished without closing it (a host
restart, a dropped NAT entry, a proxy) never fails: the read just waits forever. So the
subscriber PINGs whenever it has heard nothing for ``HEARTBEAT_S`` and reconnects when
even the PONG has not come within ``SILENCE_LIMIT_S``. Messages published while it was
away are lost (pub/sub keeps nothing): ``on_subscribed`` runs after every (re)subscription
so that the owner can catch up from the source of truth.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

logger = structlog.get_logger(__name__)

HEARTBEAT_S = 1.0
SILENCE_LIMIT_S = 3.0
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0)
READY_WAIT_S = 5.0

OnMessage = Callable[[str, bytes], None]
OnSubscribed = Callable[[], Awaitable[None]]


class Subscription:
    """Channels and patterns on one connection; ``on_message(channel, data)`` per message."""

    def __init__(
        self,
        redis_url: str,
        name: str,
        on_message: OnMessage,
        *,
        channels: Sequence[str] = (),
        patterns: Sequence[str] = (),
        on_subscribed: OnSubscribed | None = None,
    ) -> None:
        # No retries inside redis-py: its silent reconnect would skip ``on_subscribed``.
        self._redis = Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        self._name = name
        self._on_message = on_message
        self._channels, self._patterns = list(channels), list(patterns)
        self._on_subscribed = on_subscribed
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        """Starts listening; waits a little for the first subscription, not longer."""
        self._task = asyncio.create_task(self._listen_forever())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=READY_WAIT_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.aclose()

    async def _listen_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen(recovering=failures > 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._ready.is_set():  # it was subscribed: a new outage begins
                    self._ready.clear()
                    failures = 0
                if failures == 0:
                    logger.warning("subscription.lost", name=self._name, error=type(exc).__name__)
                await asyncio.sleep(RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)])
                failures += 1

    async def _listen(self, recovering: bool) -> None:
        async with self._redis.pubsub() as pubsub:
            if self._channels:
                await pubsub.subscribe(*self._channels)
            if self._patterns:
                await pubsub.psubscribe(*self._patterns)
            await self._catch_up()
            self._ready.set()
            if recovering:
                logger.info("subscription.resubscribed", name=self._name)
            await self._pump(pubsub)

    async def _catch_up(self) -> None:
        if self._on_subscribed is None:
            return
        try:
            await self._on_subscribed()
        except Exception as exc:
            # Best effort: what it would have caught up on still ends as it would without it.
            logger.warning(
                "subscription.catch_up_failed", name=self._name, error=type(exc).__name__
            )

    async def _pump(self, pubsub: PubSub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        while True:
            message = await pubsub.get_message(timeout=HEARTBEAT_S)
            if message is not None:
                heard = loop.time()
                self._dispatch(message)
            elif loop.time() - heard > SILENCE_LIMIT_S:
                raise RedisConnectionError(f"no answer from Redis for {SILENCE_LIMIT_S} s")
            else:
                await pubsub.ping()

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] not in ("message", "pmessage"):
            return
        try:
            self._on_message(message["channel"].decode(), message["data"])
        except Exception as exc:
            logger.warning("subscription.bad_message", name=self._name, error=type(exc).__name__)
