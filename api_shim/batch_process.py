"""Batch intake in a process of its own, so a 10,000-item batch never holds the API's GIL.

Parsing, validating, hashing and recording 10,000 items is a second or so of pure Python. In
the API process that time holds the GIL, and every single initiation's thread and the event
loop then wait up to the interpreter's switch interval (5 ms) each time they want it back, tens
of times per request: measured beside a running campaign, single initiations went from ~100 to
~14 answered per second with p50 above 5 s. Here the batch runs in one spawned process at a
lower CPU priority; the API process only hands it the body's bytes and relays the answer.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context, resource_tracker
from typing import Any
from uuid import UUID

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from api_shim import batch_intake
from api_shim.body import parse
from api_shim.problems import ApiProblem, DependencyUnavailable
from core import collector, logs
from schemas.batches import InitiateOutboundBatchRequest
from schemas.errors import ErrorCode, Problem
from worker.celery_app import use_broker
from worker.store.db import get_engine

logger = structlog.get_logger(__name__)

# Below the API (and its single initiations) in the kernel's eyes: a batch is throughput work.
NICENESS = 10

_database_url: str | None = None


def _start(database_url: str, redis_url: str, log_format: str) -> None:
    """Runs once in the spawned process."""
    global _database_url
    os.nice(NICENESS)
    logs.configure(log_format)
    use_broker(redis_url)
    _database_url = database_url
    collector.after_start_up()


def _accept(
    workspace_id: UUID, raw: bytes, idempotency_key: str | None
) -> tuple[str, Any, str | None, dict[str, Any]]:
    """In the intake process: ("accepted", answer, None, {}), ("problem", code, detail,
    extra) or ("unavailable", error name, None, {}). Problems travel as plain values:
    exceptions with keyword arguments (and driver errors) do not pickle."""
    assert _database_url is not None, "the intake process was not started"
    try:
        data, body, refused = parse(raw, InitiateOutboundBatchRequest, items_apart=True)
        answer = batch_intake.accept(
            get_engine(_database_url), workspace_id, data, body, idempotency_key, refused
        )
    except Problem as problem:
        return "problem", problem.code.value, problem.detail, problem.extra
    except (OperationalError, RedisError) as exc:
        logger.warning("batch.dependency_unavailable", error=type(exc).__name__)
        return "unavailable", type(exc).__name__, None, {}
    return "accepted", answer, None, {}


class BatchIntakeProcess:
    """The API's handle on the intake process; a process that died is replaced."""

    def __init__(self, database_url: str, redis_url: str, log_format: str) -> None:
        self._arguments = (database_url, redis_url, log_format)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the API process runs threads and an event loop.
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=get_context("spawn"),
            initializer=_start,
            initargs=self._arguments,
        )

    async def warm_up(self) -> None:
        """Starts the process now rather than on the first batch (an import takes ~1 s)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, os.getpid)

    async def accept(
        self, workspace_id: UUID, raw: bytes, idempotency_key: str | None
    ) -> dict[str, Any]:
        """The 202 body; raises the problem the intake answered."""
        loop = asyncio.get_running_loop()
        try:
            kind, value, detail, extra = await loop.run_in_executor(
                self._pool, _accept, workspace_id, raw, idempotency_key
            )
        except BrokenProcessPool:
            # Killed mid-batch: whether its commands are recorded is unknown; with an
            # Idempotency-Key the client's retry answers the same batch either way.
            logger.error("batch.intake_process_died")
            self._pool = self._new_pool()
            raise ApiProblem(
                ErrorCode.SERVICE_UNAVAILABLE,
                "The batch intake stopped mid-batch; retry with the same Idempotency-Key.",
            ) from None
        if kind == "unavailable":
            raise DependencyUnavailable(value)
        if kind == "problem":
            raise ApiProblem(ErrorCode(value), detail, **extra)
        return dict(value)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        # The pool's queues started multiprocessing's resource tracker, a child of ours that
        # would outlive this process as an unreaped zombie in our process group (supervisors
        # and the CI smoke check that a stopped service leaves nothing behind). Its only
        # stop is this private method, which CPython's own tests use.
        resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]
