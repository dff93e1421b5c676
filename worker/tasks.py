"""Celery tasks: thin — parse the command, call the handler."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import structlog
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from core import jsontext
from core.settings import get_settings
from schemas.commands import InitiateOutbound
from worker import handlers, relay
from worker.celery_app import app
from worker.locks import LockWaitTimeout
from worker.runtime import handler_deps, redis_client
from worker.store.commands import Outcome, UnknownCommand
from worker.store.outbox import Written

logger = structlog.get_logger(__name__)

OUTCOME_CHANNEL_PREFIX = "leadscout:outcome:"

# Infrastructure failures are retried, never recorded as an outcome (SPEC 4.1).
RETRYABLE = (OperationalError, RedisError, LockWaitTimeout, handlers.SelectionContention)


@app.task(  # type: ignore[untyped-decorator]  # celery ships no type hints
    name="leadscout.initiate_outbound",
    autoretry_for=RETRYABLE,
    retry_backoff=0.2,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def initiate_outbound(command: dict[str, Any]) -> None:
    parsed = InitiateOutbound.model_validate(command)
    with structlog.contextvars.bound_contextvars(
        command_id=str(parsed.command_id), workspace_id=str(parsed.workspace_id)
    ):
        deps = handler_deps()
        try:
            outcomes = handlers.initiate_single(parsed, deps)
        except UnknownCommand:
            logger.error("initiation.unknown_command")
            return
        announce(outcomes)
        _send_events_now(deps.engine, outcomes)


def announce(outcomes: Sequence[Outcome]) -> None:
    """Tells waiting API processes (SPEC 4.2 sync mode); losing this only costs them a 202."""
    pipe = redis_client().pipeline(transaction=False)
    for outcome in outcomes:
        message = {"status": outcome.status, "result": outcome.result, "error": outcome.error}
        pipe.publish(
            OUTCOME_CHANNEL_PREFIX + str(outcome.command_id), jsontext.dumps_bytes(message)
        )
    try:
        pipe.execute()
    except RedisError:
        logger.warning("initiation.announce_failed")


def _send_events_now(engine: Engine, outcomes: Sequence[Outcome]) -> None:
    """Fast path for the outcomes' events: the relay would send these too, only later."""
    stream = get_settings().events_stream
    writes: dict[int, list[Written]] = {}
    for outcome in outcomes:
        if outcome.write_id is not None:
            writes.setdefault(outcome.write_id, []).extend(outcome.events)
    try:
        relay.publish_now(engine, redis_client(), stream, writes)
    except (OperationalError, RedisError):
        logger.warning("initiation.fast_path_failed")


def publish(command: InitiateOutbound) -> None:
    """Sends the command to the workers; its row must be committed before this."""
    initiate_outbound.apply_async(
        (command.to_message(),), argsrepr=f"(command {command.command_id})", kwargsrepr=""
    )


# Commands per campaign task: one claim, one catalog read and one write transaction each.
CHUNK_SIZE = 2_000
CAMPAIGN_QUEUE = "leadscout.campaign"
# Single initiations go to the app's default queue, which kombu keeps as a Redis list.
SINGLE_QUEUE: str = app.conf.task_default_queue


@app.task(  # type: ignore[untyped-decorator]  # celery ships no type hints
    name="leadscout.initiate_chunk",
    queue=CAMPAIGN_QUEUE,
    autoretry_for=RETRYABLE,
    retry_backoff=0.2,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def initiate_chunk(command_ids: list[str]) -> None:
    """A campaign chunk (SPEC 4.3): the commands are read from their durable rows."""
    _yield_to_single_initiations()
    deps = handler_deps()
    outcomes = handlers.initiate_recorded([UUID(command_id) for command_id in command_ids], deps)
    # No announce: nobody waits in sync mode for a batch item (SPEC 4.3 answers 202).
    _send_events_now(deps.engine, outcomes)


# How long a campaign chunk waits, at most, for single initiations queued before it.
YIELD_MAX_S = 2.0
YIELD_POLL_S = 0.02


def _yield_to_single_initiations() -> None:
    """Fairness beyond the queues: while single initiations wait in their queue, a campaign
    chunk holds back (up to YIELD_MAX_S), so on a saturated host the database and the
    cores serve the waiting singles first instead of the next 500 campaign commands."""
    redis = redis_client()
    deadline = time.monotonic() + YIELD_MAX_S
    try:
        while redis.llen(SINGLE_QUEUE) and time.monotonic() < deadline:
            time.sleep(YIELD_POLL_S)
    except RedisError:
        return  # the broker's trouble is for the task to meet, not this courtesy


def chunks(command_ids: Sequence[UUID]) -> Iterator[Sequence[UUID]]:
    """The ids in campaign tasks' sizes (CHUNK_SIZE), in order."""
    for start in range(0, len(command_ids), CHUNK_SIZE):
        yield command_ids[start : start + CHUNK_SIZE]


def publish_chunk(command_ids: Sequence[UUID]) -> None:
    """Sends up to CHUNK_SIZE recorded commands to the campaign queue, as one task."""
    ids = [str(command_id) for command_id in command_ids]
    initiate_chunk.apply_async((ids,), argsrepr=f"({len(ids)} commands)", kwargsrepr="")
