"""Campaign batches (SPEC 4.3): the batch row with its commands, and where they stand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, delete, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert

from schemas.batches import BatchCounts, BatchStatus
from schemas.commands import InitiateOutbound
from worker.store import commands as command_log
from worker.store.commands import IDEMPOTENCY_WINDOW
from worker.store.tables import batches, commands


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch as the API sorted it: its accepted items as commands, and the invalid ones."""

    id: UUID
    workspace_id: UUID
    campaign_id: str
    commands: Sequence[InitiateOutbound]
    invalid: list[dict[str, Any]]
    request_hash: str


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What a replay of the batch answers."""

    id: UUID
    request_hash: str | None
    total: int
    invalid: list[dict[str, Any]]


def record(conn: Connection, batch: NewBatch, idempotency_key: str | None) -> StoredBatch | None:
    """Records the batch and its commands; or, if another batch holds the key, returns it."""
    if idempotency_key is None:
        conn.execute(insert(batches).values(_row(batch, None)))
    elif (holder := _claim(conn, batch, idempotency_key)) is not None:
        return holder
    command_log.record_batch(conn, batch.id, batch.request_hash, batch.commands)
    return None


def _row(batch: NewBatch, idempotency_key: str | None) -> dict[str, Any]:
    return {
        "id": batch.id,
        "workspace_id": batch.workspace_id,
        "campaign_id": batch.campaign_id,
        "total": len(batch.commands),
        "idempotency_key": idempotency_key,
        "request_hash": batch.request_hash,
        "invalid": batch.invalid,
    }


def _claim(conn: Connection, batch: NewBatch, idempotency_key: str) -> StoredBatch | None:
    """Inserts the batch row under the key, or returns the batch holding it.

    The batch row goes in before its commands: a racing twin blocks on the unique index
    until the first commits, then finds it here. A key held for more than the 24 h window
    is released to this batch; a holder discarded meanwhile (503) frees it too.
    """
    claimed = conn.execute(
        insert(batches)
        .values(_row(batch, idempotency_key))
        .on_conflict_do_nothing(
            index_elements=[batches.c.workspace_id, batches.c.idempotency_key],
            index_where=batches.c.idempotency_key.is_not(None),
        )
        .returning(batches.c.id)
    ).first()
    if claimed is not None:
        return None
    holder = _holder(conn, batch.workspace_id, idempotency_key)
    if holder is None:
        return _claim(conn, batch, idempotency_key)
    stored, expired = holder
    if expired:
        _release(conn, stored.id, idempotency_key)
        return _claim(conn, batch, idempotency_key)
    return stored


def _holder(
    conn: Connection, workspace_id: UUID, idempotency_key: str
) -> tuple[StoredBatch, bool] | None:
    """The batch holding the key, and whether its window is over."""
    row = conn.execute(
        select(
            batches.c.id,
            batches.c.request_hash,
            batches.c.total,
            batches.c.invalid,
            batches.c.created_at < func.now() - text(f"interval '{IDEMPOTENCY_WINDOW}'"),
        ).where(
            batches.c.workspace_id == workspace_id,
            batches.c.idempotency_key == idempotency_key,
        )
    ).one_or_none()
    if row is None:
        return None
    return StoredBatch(row[0], row[1], row[2], row[3]), bool(row[4])


def _release(conn: Connection, batch_id: UUID, idempotency_key: str) -> None:
    conn.execute(
        update(batches)
        .where(batches.c.id == batch_id, batches.c.idempotency_key == idempotency_key)
        .values(idempotency_key=None)
    )


def discard(conn: Connection, batch_id: UUID) -> None:
    """Removes a batch none of whose commands reached the broker (the client was told 503)."""
    conn.execute(
        delete(commands).where(commands.c.batch_id == batch_id, commands.c.status == "accepted")
    )
    conn.execute(
        delete(batches).where(
            batches.c.id == batch_id, ~exists().where(commands.c.batch_id == batch_id)
        )
    )


def status(conn: Connection, workspace_id: UUID, batch_id: UUID) -> BatchStatus | None:
    """Where the batch's commands stand; None if the workspace has no such batch."""
    batch = conn.execute(
        select(batches.c.campaign_id, batches.c.total).where(
            batches.c.id == batch_id, batches.c.workspace_id == workspace_id
        )
    ).one_or_none()
    if batch is None:
        return None
    counts, errors = _tallies(conn, batch_id)
    return BatchStatus(
        batch_id=batch_id,
        campaign_id=batch.campaign_id,
        total=batch.total,
        counts=BatchCounts(
            accepted=counts["accepted"],
            processing=counts["processing"],
            succeeded=counts["succeeded"],
            failed=counts["failed"],
        ),
        errors=errors,
    )


def _tallies(conn: Connection, batch_id: UUID) -> tuple[Counter[str], dict[str, int]]:
    """Commands by status, and the failed ones by error code: one GROUP BY."""
    rows = conn.execute(
        select(commands.c.status, commands.c.error_code, func.count())
        .where(commands.c.batch_id == batch_id)
        .group_by(commands.c.status, commands.c.error_code)
        .order_by(commands.c.error_code)
    )
    counts: Counter[str] = Counter()
    errors: dict[str, int] = {}
    for command_status, error_code, n in rows:
        counts[command_status] += n
        if command_status == "failed":
            errors[error_code] = n
    return counts, errors
