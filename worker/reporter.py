"""The reporting subscriber (SPEC 4.5, 6): campaign counts built from the event stream only.

A member of the consumer group ``leadscout-reporter``. Each batch of entries is counted in
one PostgreSQL transaction that also records the batch's event ids, and acknowledged only
after that commit. The stream is at least once (one event may sit in two entries) and a
crash between the commit and the XACK delivers the batch again, so an event id already
recorded adds nothing: the counts stay exact under any redelivery. Entries that a dead
consumer left pending are taken over with XAUTOCLAIM once idle for ``CLAIM_IDLE_MS``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from uuid import UUID

import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel
from redis import Redis
from redis.exceptions import RedisError, ResponseError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from core import collector
from schemas.api import CampaignId
from worker import metrics
from worker.relay import EVENT_FIELD, _serve_metrics, _StopFlag
from worker.retention import Retention, stream_gauges
from worker.store import campaign_stats
from worker.store.campaign_stats import Bucket, Outcome
from worker.store.db import get_engine

logger = structlog.get_logger(__name__)

GROUP = "leadscout-reporter"
CLAIM_IDLE_MS = 30_000
BATCH_SIZE = 1_000
BLOCK_MS = 1_000
# After a short batch, wait this long before reading again: a busy stream then comes in
# full batches rather than a few hundred entries per round trip and transaction.
LINGER_S = 0.1
LAG_EVERY_S = 5.0
# Redis 6.2 (the embedded server) reports no group lag; the fallback counts at most this many.
LAG_SCAN_LIMIT = 10_000
MAX_BACKOFF_S = 5.0

Entry = tuple[bytes, Mapping[bytes, bytes]]

OUTCOMES: dict[str, Outcome] = {
    "leadscout.conversation.created": "created",
    "leadscout.conversation.reused": "reused",
    "leadscout.initiation.rejected": "rejected",
}


class MalformedEntry(ValueError):
    """A stream entry that is not an event the reporter can read."""


class _Tolerant(BaseModel):
    # A tolerant reader: members the counts don't use are ignored, so a producer that adds
    # members never makes its events unreadable here.
    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", frozen=True)


class _InitiationData(_Tolerant):
    campaign_id: CampaignId | None = None
    channel_id: UUID


class _RejectionData(_Tolerant):
    campaign_id: CampaignId | None = None
    code: Annotated[str, Field(min_length=1, max_length=64)]


class _Initiation(_Tolerant):
    id: UUID
    type: Literal["leadscout.conversation.created", "leadscout.conversation.reused"]
    workspaceid: UUID
    data: _InitiationData

    @property
    def detail(self) -> str:
        return str(self.data.channel_id)


class _Rejection(_Tolerant):
    id: UUID
    type: Literal["leadscout.initiation.rejected"]
    workspaceid: UUID
    data: _RejectionData

    @property
    def detail(self) -> str:
        return self.data.code


_COUNTED_EVENT: TypeAdapter[_Initiation | _Rejection] = TypeAdapter(
    Annotated[_Initiation | _Rejection, Field(discriminator="type")]
)


@dataclass(frozen=True)
class Tally:
    """What one event adds: one to ``bucket``, unless ``event_id`` was counted before."""

    event_id: UUID
    bucket: Bucket


def read_tally(fields: Mapping[bytes, bytes]) -> Tally | None:
    """The entry's contribution; None for events the stats leave out (other types, no
    campaign). Raises MalformedEntry for anything that is not a readable event."""
    counted = _counted_event(fields)
    if counted is None or counted.data.campaign_id is None:
        return None
    outcome = OUTCOMES[counted.type]
    bucket = Bucket(counted.workspaceid, counted.data.campaign_id, outcome, counted.detail)
    return Tally(counted.id, bucket)


def _counted_event(fields: Mapping[bytes, bytes]) -> _Initiation | _Rejection | None:
    raw = fields.get(EVENT_FIELD.encode())
    if raw is not None:
        # An initiation's outcome, the common case, parsed and validated in one pass; any
        # other entry is read again step by step, to be told apart.
        with suppress(ValidationError):
            return _COUNTED_EVENT.validate_json(raw)
    event = _decode(fields)
    if event["type"] not in OUTCOMES:
        return None
    try:
        return _COUNTED_EVENT.validate_python(event)
    except ValidationError as error:
        raise MalformedEntry(_first_error(error)) from None


def _decode(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    raw = fields.get(EVENT_FIELD.encode())
    if raw is None:
        raise MalformedEntry(f"no {EVENT_FIELD!r} field")
    try:
        event = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise MalformedEntry(f"not JSON: {type(error).__name__}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise MalformedEntry("not a CloudEvent: no type")
    return event


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"


@dataclass
class Batch:
    """A batch of entries sorted by what they add to the counts."""

    tallies: list[Tally] = field(default_factory=list)
    ignored: int = 0
    malformed: int = 0

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> Batch:
        batch = cls()
        for entry_id, fields in entries:
            batch.add(entry_id, fields)
        return batch

    def add(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> None:
        try:
            tally = read_tally(fields)
        except MalformedEntry as error:
            self.malformed += 1
            logger.warning(
                "reporter.malformed_entry", entry_id=entry_id.decode(), reason=str(error)
            )
            return
        if tally is None:
            self.ignored += 1
        else:
            self.tallies.append(tally)


def count_new(engine: Engine, tallies: Sequence[Tally]) -> int:
    """Adds the tallies whose event id was never counted, in one transaction; returns how many."""
    if not tallies:
        return 0
    by_event = {tally.event_id: tally.bucket for tally in tallies}
    with engine.begin() as conn:
        new = campaign_stats.record_new_events(conn, by_event.keys())
        campaign_stats.add(conn, Counter(by_event[event_id] for event_id in new))
    return len(new)


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Reporter:
    """One consumer of the group: claims stuck entries, reads a batch, counts it, acks it."""

    def __init__(
        self,
        engine: Engine,
        redis: Redis,
        stream: str,
        consumer: str | None = None,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        batch_size: int = BATCH_SIZE,
        block_ms: int = BLOCK_MS,
    ) -> None:
        self.engine = engine
        self.redis = redis
        self.stream = stream
        self.consumer = consumer or default_consumer()
        self.claim_idle_ms = claim_idle_ms
        self.batch_size = batch_size
        self.block_ms = block_ms
        # Start with this consumer's own pending entries: a restart may reuse its name.
        self._backlog = True
        self._claim_cursor: bytes | str = "0-0"

    def step(self) -> int:
        """One round: returns how many entries it handled (0 when the read timed out)."""
        try:
            self._claim_stuck()
            entries = self.read()
        except ResponseError as error:
            if not str(error).startswith("NOGROUP"):
                raise
            self.ensure_group()  # first start, or the stream was deleted with its group
            return 0
        self.handle(entries)
        return len(entries)

    def ensure_group(self) -> None:
        """Creates the group from the stream's first entry, so it counts all that is retained."""
        try:
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if not str(error).startswith("BUSYGROUP"):
                raise
            return
        logger.info("reporter.group_created", stream=self.stream, group=GROUP)

    def handle(self, entries: Sequence[Entry]) -> None:
        self.count(entries)
        self.acknowledge(entries)

    def count(self, entries: Sequence[Entry]) -> int:
        """Counts a batch in one transaction; returns how many events were new."""
        if not entries:
            return 0
        batch = Batch.of(entries)
        counted = count_new(self.engine, batch.tallies)
        _observe(len(entries), batch, counted)
        return counted

    def acknowledge(self, entries: Sequence[Entry]) -> None:
        if entries:
            self.redis.xack(self.stream, GROUP, *(entry_id for entry_id, _ in entries))

    def after_failure(self) -> None:
        """A failed batch stays pending on this consumer: read it again before new entries."""
        self._backlog = True

    def refresh_lag(self) -> int:
        """Sets the lag gauge to the entries the group has not acknowledged; returns it."""
        lag = unacknowledged(self._group_info(), self._count_undelivered)
        metrics.REPORTER_LAG.labels(group=GROUP).set(lag)
        return lag

    def _claim_stuck(self) -> None:
        cursor, claimed, *_ = self.redis.xautoclaim(
            self.stream,
            GROUP,
            self.consumer,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch_size,
        )
        self._claim_cursor = cursor
        if claimed:
            # They are this consumer's pending entries now; the backlog read returns them,
            # entries deleted from the stream included (Redis 6.2 claims those as nil).
            logger.info("reporter.claimed", count=len(claimed), consumer=self.consumer)
            self._backlog = True

    def read(self) -> list[Entry]:
        """The next batch: own pending entries first, then new ones (waiting up to block_ms)."""
        if self._backlog:
            if entries := self._read_group("0", block=None):
                return entries
            self._backlog = False
        return self._read_group(">", block=self.block_ms)

    def _read_group(self, from_id: str, block: int | None) -> list[Entry]:
        # RESP2's reply shape: [[stream, [(entry_id, fields), ...]]], or None when the wait ran out.
        reply: Any = self.redis.xreadgroup(
            GROUP, self.consumer, {self.stream: from_id}, count=self.batch_size, block=block
        )
        return [entry for _, entries in reply or [] for entry in entries]

    def _group_info(self) -> dict[str, Any] | None:
        if not self.redis.exists(self.stream):
            return None
        groups = self.redis.xinfo_groups(self.stream)
        return next((g for g in groups if g["name"] == GROUP.encode()), None)

    def _count_undelivered(self, last_delivered_id: bytes) -> int:
        after = b"(" + last_delivered_id
        return len(self.redis.xrange(self.stream, min=after, count=LAG_SCAN_LIMIT) or [])


def unacknowledged(group: Mapping[str, Any] | None, count_after: Callable[[bytes], int]) -> int:
    """Pending plus undelivered entries: Redis 7's ``lag`` when it has one, else counted."""
    if group is None:
        return 0
    undelivered = group.get("lag")
    if undelivered is None:
        undelivered = count_after(group["last-delivered-id"])
    return int(group["pending"]) + int(undelivered)


def _observe(entries: int, batch: Batch, counted: int) -> None:
    results = {
        "counted": counted,
        "duplicate": len(batch.tallies) - counted,
        "ignored": batch.ignored,
        "malformed": batch.malformed,
    }
    for result, n in results.items():
        if n:
            metrics.REPORTER_EVENTS.labels(result=result).inc(n)
    logger.info("reporter.batch_counted", entries=entries, **results)


def run_forever(database_url: str, redis_url: str, stream: str) -> None:
    engine = get_engine(database_url)
    redis = Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30)
    reporter = Reporter(engine, redis, stream)
    _serve_metrics()
    stop = _StopFlag()
    logger.info("reporter.started", stream=stream, group=GROUP, consumer=reporter.consumer)
    collector.after_start_up()
    _loop(reporter, stop)
    logger.info("reporter.stopped")


def _loop(reporter: Reporter, stop: _StopFlag, retention: Retention | None = None) -> None:
    retention = retention or Retention(reporter.engine, reporter.redis, reporter.stream)
    failures, lag_due = 0, 0.0
    while not stop.requested:
        try:
            handled = reporter.step()
            if 0 < handled < reporter.batch_size:
                stop.sleep(LINGER_S)
            # When idle (the read waited block_ms for nothing) or every LAG_EVERY_S when busy.
            if not handled or time.monotonic() >= lag_due:
                reporter.refresh_lag()
                stream_gauges(reporter.redis, reporter.stream)
                lag_due = time.monotonic() + LAG_EVERY_S
            retention.run_if_due()
        except (SQLAlchemyError, RedisError) as error:
            failures += 1
            reporter.after_failure()
            stop.sleep(_backoff(failures, error))
            continue
        failures = 0


def _backoff(failures: int, error: Exception) -> float:
    delay = min(MAX_BACKOFF_S, 0.1 * 2.0 ** min(failures, 8))
    logger.warning(
        "reporter.error",
        error=type(error).__name__,
        detail=str(error).partition("\n")[0],
        failures=failures,
        retry_in_s=delay,
    )
    return delay
