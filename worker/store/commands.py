"""The durable command log: intake, claim, outcome."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast
from uuid import UUID

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from schemas.commands import InitiateOutbound
from worker.store import bulk
from worker.store.tables import NullableJSONB, commands

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


def record_batch(conn: Connection, batch_id: UUID, batch: Sequence[InitiateOutbound]) -> None:
    """Records a batch's commands with one executemany, each row as ``record`` writes it;
    the Idempotency-Key belongs to the batch, not to its commands."""
    if batch:
        conn.execute(insert(commands), [_row(command, None, None, batch_id) for command in batch])


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


def mark_processing(conn: Connection, command_ids: Collection[UUID]) -> dict[UUID, Outcome]:
    """Moves accepted commands to processing; returns the outcomes of those already finished.

    One statement: a finished row is rewritten unchanged, which only a redelivery meets.
    """
    rows = conn.execute(
        update(commands)
        .where(bulk.any_of(commands.c.id, command_ids))
        .values(
            status=case((commands.c.status == "accepted", "processing"), else_=commands.c.status),
            updated_at=func.now(),
        )
        .returning(commands.c.id, commands.c.status, commands.c.result, commands.c.error)
    ).all()
    return _outcomes(command_ids, rows)


def claim(conn: Connection, command_ids: Collection[UUID]) -> dict[UUID, Outcome]:
    """Locks the command rows for this transaction; returns the outcomes already recorded.

    Two deliveries of one command serialize here, so the second sees the first's outcome.
    Rows are locked in id order, so two overlapping chunks cannot deadlock.
    """
    rows = conn.execute(
        select(commands.c.id, commands.c.status, commands.c.result, commands.c.error)
        .where(bulk.any_of(commands.c.id, command_ids))
        .order_by(commands.c.id)
        .with_for_update()
    ).all()
    return _outcomes(command_ids, rows)


def _outcomes(command_ids: Collection[UUID], rows: Sequence[Any]) -> dict[UUID, Outcome]:
    if missing := set(command_ids) - {row.id for row in rows}:
        raise UnknownCommand(min(missing))
    return {
        row.id: Outcome(row.id, cast(Finished, row.status), row.result, row.error)
        for row in rows
        if row.status in FINISHED
    }


def finish(conn: Connection, outcomes: Collection[Outcome]) -> None:
    """Records the outcomes (one statement, executed as a batch)."""
    if not outcomes:
        return
    conn.execute(
        update(commands)
        .where(commands.c.id == bindparam("outcome_id"))
        .values(
            status=bindparam("outcome_status"),
            result=bindparam("outcome_result", type_=NullableJSONB),
            error=bindparam("outcome_error", type_=NullableJSONB),
            error_code=bindparam("outcome_code"),
            updated_at=func.now(),
            completed_at=func.now(),
        ),
        [
            {
                "outcome_id": outcome.command_id,
                "outcome_status": outcome.status,
                "outcome_result": outcome.result,
                "outcome_error": outcome.error,
                "outcome_code": outcome.error["code"] if outcome.error else None,
            }
            for outcome in outcomes
        ],
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
    holder_now = None if released else _stored(conn, *holder)
    if holder_now is None:
        # Released, or discarded (its publish failed) since our insert met it: try again.
        return record_idempotent(conn, command, idempotency_key, body_hash)
    return holder_now


def discard(conn: Connection, command_id: UUID) -> None:
    """Removes a command that never reached the broker (the client was told 503)."""
    conn.execute(
        delete(commands).where(commands.c.id == command_id, commands.c.status == "accepted")
    )


def load(conn: Connection, command_ids: Sequence[UUID]) -> list[InitiateOutbound]:
    """The recorded commands among ``command_ids``, in that order (unknown ids are skipped)."""
    rows = conn.execute(
        select(commands.c.id, commands.c.payload).where(bulk.any_of(commands.c.id, command_ids))
    ).all()
    by_id = {row.id: row.payload for row in rows}
    return [
        InitiateOutbound.model_validate(by_id[command_id])
        for command_id in command_ids
        if command_id in by_id
    ]


def find_any(conn: Connection, command_id: UUID) -> StoredCommand | None:
    return _stored(conn, commands.c.id == command_id)
