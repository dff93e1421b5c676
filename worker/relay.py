"""The outbox relay: moves committed outbox rows to the Redis Stream (SPEC 6, invariant 4),
and runs the command sweeper (``worker.sweeper``, SPEC 5.2) in the same loop.

Each transaction's outbox rows belong to one ``outbox_writes`` row, which is marked
published for all of them. A write's rows are sent with XADD *before* the transaction that
marks it published commits, so a crash in between sends them again: delivery is at least
once and subscribers dedupe by the CloudEvents ``id``. ``FOR UPDATE SKIP LOCKED`` on the
write lets any number of relays run at once without two of them sending the same rows
concurrently, nor the workers' fast path, which marks and sends its own writes.

A write marked published may still be lost to its subscribers: Redis restarted without
persistence (or flushed) before they read its entry. The relay keeps a key in Redis; when
the key is gone, Redis lost its data, and the writes published in the last
``REPLAY_WINDOW_S`` are sent again (``replay_after_data_loss``).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import structlog
from kombu.exceptions import OperationalError as BrokerError
from prometheus_client import start_http_server
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import BigInteger, Engine, Row, Text, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import SQLAlchemyError

from core import collector
from core.settings import get_settings
from worker import metrics
from worker.store.db import get_engine
from worker.store.outbox import Written
from worker.store.tables import outbox, outbox_writes

logger = structlog.get_logger(__name__)

MAX_BACKOFF_S = 5.0
EVENT_FIELD = "event"
# Present while Redis keeps its data: a restart without persistence or a flush removes it,
# with the stream entries no subscriber had read yet.
MEMORY_KEY = "leadscout:relay:memory"
# How far back the relay sends published rows again after Redis lost its data: a
# subscriber further behind than this when it happened misses the older entries.
REPLAY_WINDOW_S = 900.0
MEMORY_CHECK_S = 1.0


def relay_batch(engine: Engine, redis: Redis, stream: str, limit: int = 500) -> int:
    """Sends the oldest unpublished writes no other relay holds, whole, about ``limit``
    events in all (at least one write); returns how many events."""
    with engine.begin() as conn:
        oldest = conn.execute(_OLDEST_WRITES, {"at_most": limit}).all()
        if not oldest:
            return 0
        writes = conn.execute(_LOCK_WRITES, {"write_ids": _up_to(oldest, limit)}).all()
        if not writes:
            return 0
        write_ids = [write.id for write in writes]
        payloads = conn.execute(_PAYLOADS, {"write_ids": write_ids}).scalars().all()
        _xadd(redis, stream, [payload.encode() for payload in payloads])
        conn.execute(_MARK_PUBLISHED, {"write_ids": write_ids})
    _observe(writes, len(payloads), path="sweep")
    logger.info("relay.batch_sent", count=len(payloads), writes=len(writes))
    return len(payloads)


def _up_to(writes: Sequence[Row[int, int]], limit: int) -> list[int]:
    """The oldest writes whose events add up to ``limit`` at most; the first one whatever
    its size."""
    taken: list[int] = []
    events = 0
    for write in writes:
        events += write.events
        if taken and events > limit:
            break
        taken.append(write.id)
    return taken


def publish_now(
    engine: Engine, redis: Redis, stream: str, writes: Mapping[int, Sequence[Written]]
) -> int:
    """The worker's fast path after its commits: sends these writes' events, as it wrote
    them to the outbox (no read-back), unless another relay sent them already; returns how
    many events.

    One statement marks the writes and their XADD follows in the same transaction: the mark
    commits only after the XADD, so a crash in between leaves them for the relay to send
    again, as with ``relay_batch``. A write a relay holds is passed over: that relay sends it."""
    if not writes:
        return 0
    with engine.begin() as conn:
        marked = conn.execute(_MARK_NAMED, {"write_ids": list(writes)}).all()
        if not marked:
            return 0
        events = [event.json for write in marked for event in writes[write.id]]
        _xadd(redis, stream, events)
    _observe(marked, len(events), path="direct")
    return len(events)


def replay_after_data_loss(
    engine: Engine, redis: Redis, window_s: float = REPLAY_WINDOW_S
) -> int | None:
    """If Redis lost its data since the last call, marks the writes published in the last
    ``window_s`` unpublished again, for ``relay_batch`` to send; returns how many events
    (None: no loss). The key is set after the commit: a crash in between replays again
    (duplicates that subscribers drop by event id), never less. Several relays may replay
    at once."""
    if redis.exists(MEMORY_KEY):
        return None
    since = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, window_s)
    with engine.begin() as conn:
        replayed: int = sum(
            conn.execute(
                update(outbox_writes)
                .where(outbox_writes.c.published_at > since)
                .values(published_at=None)
                .returning(outbox_writes.c.events)
            ).scalars()
        )
    redis.set(MEMORY_KEY, "1")
    if replayed:
        logger.warning("relay.redis_data_lost", replayed=replayed, window_s=window_s)
    return replayed


_WRITE_IDS = bindparam("write_ids", type_=ARRAY(BigInteger))
_UNPUBLISHED = outbox_writes.c.published_at.is_(None)
_LAG_S = func.extract("epoch", func.clock_timestamp() - outbox_writes.c.created_at).label("lag_s")

# Read without locks, to choose how many to take; then locked, passing over those another
# relay or a fast path holds (a lock per write, not per event).
_OLDEST_WRITES = (
    select(outbox_writes.c.id, outbox_writes.c.events)
    .where(_UNPUBLISHED)
    .order_by(outbox_writes.c.id)
    .limit(bindparam("at_most"))
)
_NAMED_UNSENT = (
    select(outbox_writes.c.id)
    .where(outbox_writes.c.id == any_(_WRITE_IDS), _UNPUBLISHED)
    .with_for_update(skip_locked=True)
)
_LOCK_WRITES = _NAMED_UNSENT.add_columns(_LAG_S).order_by(outbox_writes.c.id)
# The payload's text as stored (json keeps it verbatim): sent as is, not parsed and encoded.
_PAYLOADS = (
    select(outbox.c.payload.cast(Text))
    .where(outbox.c.write_id == any_(_WRITE_IDS))
    .order_by(outbox.c.id)
)
_MARK_PUBLISHED = (
    update(outbox_writes)
    .where(outbox_writes.c.id == any_(_WRITE_IDS))
    .values(published_at=func.now())
)
# Locked in a subquery so that SKIP LOCKED applies: a write a relay is sending is left to it,
# not waited for.
_MARK_NAMED = (
    update(outbox_writes)
    .where(outbox_writes.c.id.in_(_NAMED_UNSENT.scalar_subquery()))
    .values(published_at=func.now())
    .returning(outbox_writes.c.id, _LAG_S)
)


def _xadd(redis: Redis, stream: str, events: Sequence[bytes]) -> None:
    pipe = redis.pipeline(transaction=False)
    for json in events:
        pipe.xadd(stream, {EVENT_FIELD: json})
    pipe.execute()


def _observe(writes: Sequence[Row[Any]], events: int, path: str) -> None:
    metrics.OUTBOX_LAG.observe(max(float(write.lag_s) for write in writes))
    metrics.EVENTS_RELAYED.labels(path=path).inc(events)


class _StopFlag:
    """Set by SIGTERM/SIGINT; the current batch finishes, then the loop ends."""

    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._request)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def sleep(self, seconds: float) -> None:
        # Short naps rather than one long one: a stop request must not wait out a backoff.
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


def run_forever(database_url: str, redis_url: str, stream: str, idle_sleep_s: float = 0.2) -> None:
    # Here, not at the top: the tasks the sweeper publishes import this module (fast path).
    from worker.celery_app import use_broker
    from worker.sweeper import Sweeper

    engine = get_engine(database_url)
    redis = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    use_broker(redis_url)
    sweeper = Sweeper(engine, redis, get_settings().sweep_after_s)
    _serve_metrics()
    stop = _StopFlag()
    logger.info("relay.started", stream=stream, sweep_after_s=sweeper.after_s)
    collector.after_start_up()
    failures = 0
    memory_checked = 0.0
    while not stop.requested:
        try:
            if time.monotonic() - memory_checked >= MEMORY_CHECK_S:
                replay_after_data_loss(engine, redis)
                memory_checked = time.monotonic()
            sent = relay_batch(engine, redis, stream)
            sweeper.maybe_sweep()
        except (SQLAlchemyError, RedisError, BrokerError) as error:
            failures += 1
            stop.sleep(_backoff(failures, error))
            continue
        failures = 0
        if not sent:
            stop.sleep(idle_sleep_s)
    logger.info("relay.stopped")


def _backoff(failures: int, error: Exception) -> float:
    delay = min(MAX_BACKOFF_S, 0.1 * 2.0 ** min(failures, 8))
    logger.warning(
        "relay.error",
        error=type(error).__name__,
        detail=str(error).partition("\n")[0],
        failures=failures,
        retry_in_s=delay,
    )
    return delay


def _serve_metrics() -> None:
    port = get_settings().metrics_port
    if port is not None:
        start_http_server(port)
