"""Retention of the event stream and of the reporter's dedupe table.

Policy: an entry of ``leadscout:events`` is removed once it is older than
``STREAM_RETENTION_S`` (7 days) *and* every consumer group has acknowledged it. So
``XTRIM MINID`` gets the lower of "now - 7 days" and, for each group, the first entry it
still owes: its lowest pending entry, or if none is pending, the entry after its
last-delivered one. A subscriber that is down for longer than a week keeps its backlog.
Entry ids carry Redis's clock, so the age is measured against Redis's ``TIME``.

``campaign_events_counted`` remembers counted event ids so that a duplicate adds nothing.
A duplicate is an entry of the same event sent again (the relay after the worker's fast
path: seconds apart) or an entry delivered again (still in the stream). Rows are kept
for the same 7 days, and never when counted after the oldest entry still in the stream,
less ``CLOCK_MARGIN_S`` for the gap between Redis's clock and PostgreSQL's.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis import Redis
from sqlalchemy import Connection, Engine, func, select

from worker import metrics
from worker.store.tables import campaign_events_counted

logger = structlog.get_logger(__name__)

STREAM_RETENTION_S = 7 * 24 * 3600.0
RUN_EVERY_S = 60.0
CLOCK_MARGIN_S = 3600.0
PRUNE_BATCH = 10_000
# A first run on a long-unpruned table would stall the reporter's counting: the rest waits
# for the next run.
PRUNE_MAX_BATCHES = 20

StreamId = tuple[int, int]


def parse_id(entry_id: bytes | str) -> StreamId:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _format(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def redis_now_ms(redis: Redis) -> int:
    seconds, micros = redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def trim_stream(redis: Redis, stream: str, max_age_s: float) -> int:
    """Removes the entries older than ``max_age_s`` that no group still owes; returns how many."""
    if not redis.exists(stream):
        return 0
    floor = (redis_now_ms(redis) - int(max_age_s * 1000), 0)
    owed = [_first_owed(redis, stream, group) for group in redis.xinfo_groups(stream)]
    return int(redis.xtrim(stream, minid=_format(min([floor, *owed])), approximate=False))


def _first_owed(redis: Redis, stream: str, group: Mapping[str, Any]) -> StreamId:
    """The first entry the group has not acknowledged: everything before it may go."""
    pending = redis.xpending(stream, group["name"])
    if pending["pending"]:
        return parse_id(pending["min"])
    ms, seq = parse_id(group["last-delivered-id"])
    return ms, seq + 1


def stream_gauges(redis: Redis, stream: str) -> tuple[int, float]:
    """Sets and returns the stream's length and its oldest entry's age in seconds (0 if empty)."""
    length = int(redis.xlen(stream))
    oldest_ms = _oldest_entry_ms(redis, stream)
    age = 0.0 if oldest_ms is None else max(0.0, (redis_now_ms(redis) - oldest_ms) / 1000)
    metrics.STREAM_LENGTH.labels(stream=stream).set(length)
    metrics.STREAM_OLDEST_AGE.labels(stream=stream).set(age)
    return length, age


def oldest_entry_time(redis: Redis, stream: str) -> datetime | None:
    oldest_ms = _oldest_entry_ms(redis, stream)
    return None if oldest_ms is None else datetime.fromtimestamp(oldest_ms / 1000, UTC)


def _oldest_entry_ms(redis: Redis, stream: str) -> int | None:
    first: Any = redis.xrange(stream, count=1)
    return parse_id(first[0][0])[0] if first else None


def prune_counted(engine: Engine, max_age_s: float, keep_after: datetime | None = None) -> int:
    """Deletes dedupe rows counted more than ``max_age_s`` ago (database clock) and before
    ``keep_after - CLOCK_MARGIN_S``; in batches, each its own transaction, at most
    ``PRUNE_MAX_BATCHES``. Returns how many."""
    removed = 0
    for _ in range(PRUNE_MAX_BATCHES):
        with engine.begin() as conn:
            batch = _prune_batch(conn, _cutoff(max_age_s, keep_after))
        removed += batch
        if batch < PRUNE_BATCH:
            break
    return removed


def _cutoff(max_age_s: float, keep_after: datetime | None) -> Any:
    by_age = func.now() - timedelta(seconds=max_age_s)
    if keep_after is None:
        return by_age
    return func.least(by_age, keep_after - timedelta(seconds=CLOCK_MARGIN_S))


def _prune_batch(conn: Connection, cutoff: Any) -> int:
    table = campaign_events_counted
    doomed = (
        select(table.c.event_id)
        .where(table.c.counted_at < cutoff)
        .limit(PRUNE_BATCH)
        .scalar_subquery()
    )
    return int(conn.execute(table.delete().where(table.c.event_id.in_(doomed))).rowcount)


class Retention:
    """The policy, applied at most every ``every_s`` by a long-running process (the reporter)."""

    def __init__(
        self,
        engine: Engine,
        redis: Redis,
        stream: str,
        max_age_s: float = STREAM_RETENTION_S,
        every_s: float = RUN_EVERY_S,
    ) -> None:
        self.engine, self.redis, self.stream = engine, redis, stream
        self.max_age_s, self.every_s = max_age_s, every_s
        self._due = 0.0

    def run_if_due(self) -> bool:
        """Applies the policy if ``every_s`` passed since the last attempt; says if it ran."""
        now = time.monotonic()
        if now < self._due:
            return False
        self._due = now + self.every_s  # a failed run waits its turn too: no tight retry loop
        self.apply()
        return True

    def apply(self) -> None:
        trimmed = trim_stream(self.redis, self.stream, self.max_age_s)
        keep_after = oldest_entry_time(self.redis, self.stream)
        pruned = prune_counted(self.engine, self.max_age_s, keep_after)
        length, age = stream_gauges(self.redis, self.stream)
        logger.info(
            "retention.applied",
            stream=self.stream,
            trimmed=trimmed,
            pruned=pruned,
            length=length,
            oldest_age_s=round(age, 1),
        )
