"""The command sweeper (SPEC 5.2): publishes again what the broker lost.

A command is durable in PostgreSQL before its message leaves, but the message can be lost:
Redis restarted without persistence, a worker killed with the message unacknowledged
(Celery's Redis transport gives it back only after the visibility timeout), a publish that
failed after the commit. Any command still ``accepted`` or ``processing`` that nobody
touched for ``LEADSCOUT_SWEEP_AFTER_S`` is published again: a batch's commands as chunk
tasks on the campaign queue, a single one as a single task. The handler is idempotent
(the command rows are claimed under a lock and a finished one returns its outcome), so a
second delivery of a command that was only slow costs one claim, never a second effect.

An ``accepted`` command can also just be waiting behind a campaign's backlog. Publishing
those again would copy the backlog every ``sweep_after`` (a million-lead campaign queues
for minutes), so the sweeper first reads the oldest message still waiting in each queue:
the queues are FIFO, so a command last published (recorded, or swept) before that
message's commands has left the queue, or never reached it. Only those are taken
(``commands.take_stale``), with a margin of half the sweep delay: concurrent requests
publish in a slightly different order than they record.

It runs inside the relay's loop (``worker.relay.run_forever``): the relay is already a
polling PostgreSQL loop with backoff that every deployment runs, and it is safe in several
copies; so is the sweep (``FOR UPDATE SKIP LOCKED`` and the touch).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

import structlog
from pydantic import ValidationError
from redis import Redis
from sqlalchemy import Connection, Engine

from schemas.commands import InitiateOutbound
from worker import metrics, tasks
from worker.store import commands
from worker.store.commands import StaleCommand

logger = structlog.get_logger(__name__)

# At most this many commands a pass: one transaction holds their rows while they are sent.
SWEEP_LIMIT = 5000
MAX_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.2


def sweep(engine: Engine, redis: Redis, after_s: float, limit: int = SWEEP_LIMIT) -> int:
    """One pass: publishes the stale commands again; returns how many.

    The publish happens before the commit, so a crash in between leaves the commands
    untouched and the next pass sends them again (a duplicate the handler absorbs).
    """
    margin = timedelta(seconds=after_s / 2)
    with engine.begin() as conn:
        stale = commands.take_stale(
            conn,
            after_s,
            limit,
            single_queued_since=oldest_waiting(conn, redis, tasks.SINGLE_QUEUE, margin),
            chunk_queued_since=oldest_waiting(conn, redis, tasks.CAMPAIGN_QUEUE, margin),
        )
        if not stale:
            return 0
        chunks, singles = publish(stale)
    metrics.COMMANDS_SWEPT.inc(len(stale))
    logger.info("sweeper.republished", commands=len(stale), chunks=chunks, singles=singles)
    return len(stale)


def oldest_waiting(
    conn: Connection, redis: Redis, queue: str, margin: timedelta
) -> datetime | None:
    """When the commands of the queue's oldest waiting message were last touched (just
    before it was published), less ``margin``; None when the queue is empty or that
    message names no known command.

    kombu's Redis transport LPUSHes and BRPOPs, so the oldest message is the list's last.
    """
    raw = redis.lindex(queue, -1)
    if raw is None:
        return None
    touched = commands.last_touched(conn, message_command_ids(raw))
    return None if touched is None else touched - margin


def message_command_ids(raw: bytes | str) -> list[UUID]:
    """The command ids a queued task message carries: a chunk's list, or a single command's
    ``commandId``. Anything else (unreadable, another task) names none."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        first = json.loads(body)[0][0]
        ids = first if isinstance(first, list) else [first["commandId"]]
        return [UUID(str(command_id)) for command_id in ids]
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return []


def publish(stale: Sequence[StaleCommand]) -> tuple[int, int]:
    """Batch commands as chunk tasks of at most CHUNK_SIZE, each of one batch, oldest
    first; single ones one by one. Returns (chunk tasks, single tasks)."""
    by_batch: dict[UUID, list[UUID]] = {}
    for command in stale:
        if command.batch_id is not None:
            by_batch.setdefault(command.batch_id, []).append(command.id)
    chunks = 0
    for ids in by_batch.values():
        for chunk in tasks.chunks(ids):
            tasks.publish_chunk(chunk)
            chunks += 1
    singles = [command for command in stale if command.batch_id is None]
    for command in singles:
        # The stored payload is the command as the intake published it (``to_message()``).
        try:
            tasks.publish(InitiateOutbound.model_validate(command.payload))
        except ValidationError:
            # No worker could read it either; the relay must go on. Logged every window.
            logger.error("sweeper.unreadable_command", command_id=str(command.id))
    return chunks, len(singles)


class Sweeper:
    """Runs ``sweep`` from a loop that calls ``maybe_sweep`` often; a pass at most every
    ``interval_s``: a quarter of the sweep delay, between 0.2 s and 1 s."""

    def __init__(self, engine: Engine, redis: Redis, after_s: float) -> None:
        self.engine = engine
        self.redis = redis
        self.after_s = after_s
        self.interval_s = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, after_s / 4))
        self._next = 0.0

    def maybe_sweep(self) -> int:
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.interval_s
        return sweep(self.engine, self.redis, self.after_s)
