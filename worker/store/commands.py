"""The durable command log: intake, claim, outcome."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import Connection, func, insert, select, update

from schemas.commands import InitiateOutbound
from worker.store.tables import commands

Finished = Literal["succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class Outcome:
    command_id: UUID
    status: Finished
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


def request_hash(body: dict[str, Any]) -> str:
    """Equal as parsed JSON ⇒ equal hash (SPEC 4.2 idempotency)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(
    conn: Connection,
    command: InitiateOutbound,
    *,
    idempotency_key: str | None = None,
    body_hash: str | None = None,
    batch_id: UUID | None = None,
) -> None:
    payload = command.model_dump(mode="json")
    conn.execute(
        insert(commands).values(
            id=command.command_id,
            workspace_id=command.workspace_id,
            idempotency_key=idempotency_key,
            request_hash=body_hash or request_hash(payload["request"]),
            payload=payload,
            batch_id=batch_id,
        )
    )


def mark_processing(conn: Connection, command_id: UUID) -> Outcome | None:
    """Moves an accepted command to processing; returns its outcome if it already has one."""
    conn.execute(
        update(commands)
        .where(commands.c.id == command_id, commands.c.status == "accepted")
        .values(status="processing", updated_at=func.now())
    )
    return _outcome(conn, command_id, lock=False)


def claim(conn: Connection, command_id: UUID) -> Outcome | None:
    """Locks the command row for this transaction; returns its outcome if it already has one.

    Two deliveries of one command serialize here, so the second sees the first's outcome.
    """
    return _outcome(conn, command_id, lock=True)


def _outcome(conn: Connection, command_id: UUID, *, lock: bool) -> Outcome | None:
    query = select(commands.c.status, commands.c.result, commands.c.error).where(
        commands.c.id == command_id
    )
    row = conn.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise UnknownCommand(command_id)
    if row.status not in ("succeeded", "failed"):
        return None
    return Outcome(command_id, row.status, row.result, row.error)


def finish(conn: Connection, outcome: Outcome) -> None:
    conn.execute(
        update(commands)
        .where(commands.c.id == outcome.command_id)
        .values(
            status=outcome.status,
            result=outcome.result,
            error=outcome.error,
            error_code=outcome.error["code"] if outcome.error else None,
            updated_at=func.now(),
            completed_at=func.now(),
        )
    )


class UnknownCommand(LookupError):
    """A task named a command that was never recorded."""
