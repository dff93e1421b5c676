"""Command intake (SPEC 4.2): durable record, publish, then wait for the outcome or not."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import structlog
from kombu.exceptions import OperationalError as BrokerOperationalError
from redis.exceptions import RedisError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool

from api_shim.outcomes import OutcomeListener
from api_shim.problems import ApiProblem
from schemas.api import InitiateOutboundRequest
from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from worker import tasks
from worker.store import commands
from worker.store.commands import FINISHED, StoredCommand, request_hash
from worker.store.db import autocommit

logger = structlog.get_logger(__name__)

# What publishing raises when the broker is unreachable: kombu's OperationalError once its
# connection retries are spent (what ``delay`` raises with Redis down), redis-py's own error
# on a path kombu does not wrap. Anything else is a bug, not an outage.
BROKER_UNAVAILABLE = (BrokerOperationalError, RedisError)


@dataclass(frozen=True, slots=True)
class Status:
    """Where a command stands, as far as the answer to the client is concerned."""

    command_id: UUID
    status: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _status(stored: StoredCommand) -> Status:
    return Status(stored.id, stored.status, stored.result, stored.error)


@dataclass
class Intake:
    engine: Engine
    listener: OutcomeListener
    sync_wait_s: float

    async def submit(
        self,
        workspace_id: UUID,
        raw_body: Any,
        request: InitiateOutboundRequest,
        idempotency_key: str | None,
        wait: bool,
    ) -> Status:
        command = InitiateOutbound(command_id=uuid4(), workspace_id=workspace_id, request=request)
        structlog.contextvars.bind_contextvars(
            command_id=str(command.command_id), workspace_id=str(workspace_id)
        )
        body_hash = request_hash(raw_body)
        # Registered before the command is published, so its outcome cannot slip past.
        outcome = self.listener.expect(command.command_id) if wait else None
        try:
            existing = await run_in_threadpool(self._accept, command, idempotency_key, body_hash)
            if existing is None:
                if outcome is None:
                    return Status(command.command_id, "accepted")
                return await self._await(command.command_id, outcome)
        finally:
            if outcome is not None:
                self.listener.forget(command.command_id, outcome)
        return await self._replay(existing, body_hash, wait)

    async def _replay(self, existing: StoredCommand, body_hash: str, wait: bool) -> Status:
        """The answer for an Idempotency-Key met again: the command it names, as it stands."""
        if existing.request_hash != body_hash:
            raise ApiProblem(
                ErrorCode.IDEMPOTENCY_KEY_REUSED,
                "This Idempotency-Key was used with another body.",
                commandId=str(existing.id),
            )
        if existing.finished or not wait:
            return _status(existing)
        outcome = self.listener.expect(existing.id)
        try:
            if (now := await self.current(existing.id)).finished:
                return now  # finished between our read and our subscription
            return await self._await(existing.id, outcome)
        finally:
            self.listener.forget(existing.id, outcome)

    def _accept(
        self, command: InitiateOutbound, key: str | None, body_hash: str
    ) -> StoredCommand | None:
        """Records and publishes a new command; returns instead the command an
        Idempotency-Key already names (nothing recorded, nothing published)."""
        existing = self._record(command, key, body_hash)
        if existing is None:
            self._publish(command)
        return existing

    def _record(
        self, command: InitiateOutbound, key: str | None, body_hash: str
    ) -> StoredCommand | None:
        if key is None:
            with autocommit(self.engine) as conn:
                commands.record(conn, command, body_hash=body_hash)
            return None
        with self.engine.begin() as conn:
            return commands.record_idempotent(conn, command, key, body_hash)

    def _publish(self, command: InitiateOutbound) -> None:
        """Publishes the recorded command; with the broker down, takes the record back (503),
        unless a worker already took the command from the table: then it is accepted.

        Any other failure is a bug: it propagates (500) and the row stays. The message may
        have left anyway, and the worker drops a command whose row is gone; a row stuck in
        ``accepted`` can be found and replayed, a deleted one leaves no trace.
        """
        try:
            tasks.publish(command)
        except BROKER_UNAVAILABLE as exc:
            logger.warning("intake.publish_failed", error=type(exc).__name__)
            if not self._discard(command.command_id):
                # A 503 now would invite a retry of a command that runs, or ran.
                logger.info("intake.taken_while_unpublished")
                return
            raise ApiProblem(
                ErrorCode.SERVICE_UNAVAILABLE,
                "The broker is unreachable; nothing was accepted. Retry later.",
            ) from None

    def _discard(self, command_id: UUID) -> bool:
        with self.engine.begin() as conn:
            return commands.discard(conn, command_id)

    async def _await(self, command_id: UUID, outcome: asyncio.Future[dict[str, Any]]) -> Status:
        try:
            message = await asyncio.wait_for(asyncio.shield(outcome), timeout=self.sync_wait_s)
        except TimeoutError:
            return await self._current_or_accepted(command_id)
        return Status(command_id, message["status"], message["result"], message["error"])

    async def _current_or_accepted(self, command_id: UUID) -> Status:
        """The command is recorded and published: if the database cannot tell its status
        now, it is still accepted (202). A 503 would say nothing was accepted, and invite a
        retry that initiates twice."""
        try:
            return await self.current(command_id)
        except OperationalError:
            logger.warning("intake.status_unavailable")
            return Status(command_id, "accepted")

    async def current(self, command_id: UUID) -> Status:
        stored = await run_in_threadpool(self._find, command_id)
        return _status(stored) if stored else Status(command_id, "accepted")

    def _find(self, command_id: UUID) -> StoredCommand | None:
        with self.engine.connect() as conn:
            return commands.find_any(conn, command_id)

    async def status_in(self, workspace_id: UUID, command_id: UUID) -> Status | None:
        stored = await run_in_threadpool(self._find_in, workspace_id, command_id)
        return _status(stored) if stored else None

    def _find_in(self, workspace_id: UUID, command_id: UUID) -> StoredCommand | None:
        with self.engine.connect() as conn:
            return commands.find(conn, workspace_id, command_id)
