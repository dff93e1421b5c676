"""A Redis lock per channel, with a fencing token from PostgreSQL.

redis-py's ``Lock`` is the SET NX PX + owner token + Lua release recipe; the
token issued right after acquiring lets the write transaction refuse a holder
whose lock expired while it stalled (see ``worker.store.fences``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from uuid import UUID

import structlog
from redis import Redis
from redis.exceptions import LockError

from worker import metrics

logger = structlog.get_logger(__name__)

LOCK_POLL_S = 0.002


def lock_key(channel_id: UUID) -> str:
    return f"leadscout:lock:channel:{channel_id}"


class LockWaitTimeout(Exception):
    """The channel lock could not be had within the bounded wait: retry later."""


class ChannelLocks:
    def __init__(
        self,
        redis: Redis,
        issue_fences: Callable[[Sequence[UUID]], dict[UUID, int]],
        ttl_ms: int,
        wait_ms: int,
    ) -> None:
        self._redis = redis
        self._issue_fences = issue_fences
        self._ttl_s = ttl_ms / 1000
        self._wait_s = wait_ms / 1000

    @contextmanager
    def hold(self, channel_ids: Collection[UUID]) -> Iterator[dict[UUID, int]]:
        """Holds every channel's lock; yields the fencing token of each holding.

        Locks are taken in id order, so two holders of overlapping sets cannot deadlock.
        """
        started = time.monotonic()
        with ExitStack() as held:
            for channel_id in sorted(channel_ids):
                held.enter_context(self._one(channel_id))
            metrics.LOCK_WAIT.observe(time.monotonic() - started)
            yield self._issue_fences(sorted(channel_ids))

    @contextmanager
    def _one(self, channel_id: UUID) -> Iterator[None]:
        lock = self._redis.lock(
            lock_key(channel_id),
            timeout=self._ttl_s,
            sleep=LOCK_POLL_S,
            blocking_timeout=self._wait_s,
            thread_local=False,
        )
        if not lock.acquire():
            raise LockWaitTimeout(f"channel {channel_id}: lock not acquired in {self._wait_s}s")
        try:
            yield
        finally:
            _release(lock, channel_id)


def _release(lock: object, channel_id: UUID) -> None:
    try:
        lock.release()  # type: ignore[attr-defined]
    except LockError:
        # The TTL ran out and maybe someone else holds it now: theirs to release.
        logger.warning("channel_lock.expired_before_release", channel_id=str(channel_id))
