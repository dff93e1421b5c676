"""The durable command log: intake, claim, outcome."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, cast
from uuid import UUID

from sqlalchemy import Connection, delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from schemas.commands import InitiateOutbound
from worker.store.tables import commands

Finished = Literal["succeeded", "failed"]
FINISHED: tuple[Finished, ...] = ("succeeded", "failed")


@dataclass(frozen=True, slots=True)
class Outcome:
    command_id: UUID
    status: Finished
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The outbox events this processing wrote (none when it was a redelivery).
    event_ids: tuple[UUID, ...] = ()


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
    conn.execute(insert(commands).values(_row(command, idempotency_key, body_hash, batch_id)))


def _row(
    command: InitiateOutbound,
    idempotency_key: str | None,
    body_hash: str | None,
    batch_id: UUID | None = None,
) -> dict[str, Any]:
    payload = command.to_message()
    return {
        "id": command.command_id,
        "workspace_id": command.workspace_id,
        "idempotency_key": idempotency_key,
        "request_hash": body_hash or request_hash(payload["request"]),
        "payload": payload,
        "batch_id": batch_id,
    }


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
    stored = _stored(conn, commands.c.id == command_id, lock=lock)
    if stored is None:
        raise UnknownCommand(command_id)
    if not stored.finished:
        return None
    return Outcome(command_id, cast(Finished, stored.status), stored.result, stored.error)


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


@dataclass(frozen=True, slots=True)
class StoredCommand:
    id: UUID
    status: str
    request_hash: str
    result: dict[str, Any] | None
    error: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def _stored(conn: Connection, *where: Any, lock: bool = False) -> StoredCommand | None:
    query = select(
        commands.c.id,
        commands.c.status,
        commands.c.request_hash,
        commands.c.result,
        commands.c.error,
    ).where(*where)
    row = conn.execute(query.with_for_update() if lock else query).one_or_none()
    return StoredCommand(*row) if row is not None else None


def find(conn: Connection, workspace_id: UUID, command_id: UUID) -> StoredCommand | None:
    return _stored(conn, commands.c.workspace_id == workspace_id, commands.c.id == command_id)


IDEMPOTENCY_WINDOW = "24 hours"


def record_idempotent(
    conn: Connection, command: InitiateOutbound, idempotency_key: str, body_hash: str
) -> StoredCommand | None:
    """Records the command under its key, or returns the command already holding that key.

    A racing twin blocks on the unique index until the first commits, then sees it.
    A key older than the 24 h window is released and the new command takes it.
    """
    stmt = (
        pg_insert(commands)
        .values(_row(command, idempotency_key, body_hash))
        .on_conflict_do_nothing(
            index_elements=[commands.c.workspace_id, commands.c.idempotency_key],
            index_where=commands.c.idempotency_key.is_not(None),
        )
        .returning(commands.c.id)
    )
    if conn.execute(stmt).first() is not None:
        return None
    holder = (
        commands.c.workspace_id == command.workspace_id,
        (commands.c.idempotency_key == idempotency_key),
    )
    released = conn.execute(
        update(commands)
        .where(
            *holder, commands.c.created_at < func.now() - text(f"interval '{IDEMPOTENCY_WINDOW}'")
        )
        .values(idempotency_key=None)
    ).rowcount
    if released:
        return record_idempotent(conn, command, idempotency_key, body_hash)
    return _stored(conn, *holder)


def discard(conn: Connection, command_id: UUID) -> None:
    """Removes a command that never reached the broker (the client was told 503)."""
    conn.execute(
        delete(commands).where(commands.c.id == command_id, commands.c.status == "accepted")
    )


def find_any(conn: Connection, command_id: UUID) -> StoredCommand | None:
    return _stored(conn, commands.c.id == command_id)
