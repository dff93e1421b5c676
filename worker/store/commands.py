"""The durable command log: intake, claim, outcome."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Interval,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from core import jsontext
from schemas.commands import InitiateOutbound
from worker.store import bulk
from worker.store.outbox import Written
from worker.store.tables import commands

Finished = Literal["succeeded", "failed"]
FINISHED: tuple[Finished, ...] = ("succeeded", "failed")


@dataclass(frozen=True, slots=True)
class Outcome:
    command_id: UUID
    status: Finished
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # The outbox events this processing wrote (none for a redelivery), and their write.
    events: tuple[Written, ...] = ()
    write_id: int | None = None

    @property
    def event_ids(self) -> tuple[UUID, ...]:
        return tuple(event.id for event in self.events)


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
    conn.execute(_RECORD, _row(command, idempotency_key, body_hash, batch_id))


_RECORD = insert(commands)


_BATCH_COLUMNS = ["id", "workspace_id", "idempotency_key", "request_hash", "payload", "batch_id"]


def record_batch(
    conn: Connection, batch_id: UUID, batch_hash: str, batch: Sequence[InitiateOutbound]
) -> None:
    """Records a batch's commands in one write (``bulk.copy_rows``). The Idempotency-Key
    belongs to the batch, not to its commands; so does the request hash each row carries:
    the batch body's, the request that made the command."""
    bulk.copy_rows(
        conn,
        commands,
        _BATCH_COLUMNS,
        (
            (
                c.command_id,
                c.workspace_id,
                None,
                batch_hash,
                bulk.encoded_json(c.to_json()),
                batch_id,
            )
            for c in batch
        ),
    )


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


# The payload as JSON text, for pydantic to parse and validate in one pass (about 2.5x
# json.loads then model_validate).
_PAYLOAD_TEXT = commands.c.payload.cast(Text).label("payload")


def _command(payload: str) -> InitiateOutbound:
    return InitiateOutbound.model_validate_json(payload)


_OUTCOME_COLUMNS = (commands.c.id, commands.c.status, commands.c.result, commands.c.error)
_MARK_PROCESSING = (
    update(commands)
    .where(commands.c.id == any_(bulk.id_array("ids")))
    .values(
        status=case((commands.c.status == "accepted", "processing"), else_=commands.c.status),
        updated_at=func.now(),
    )
    .returning(*_OUTCOME_COLUMNS)
)
_READ_CHUNK = select(*_OUTCOME_COLUMNS, _PAYLOAD_TEXT).where(
    commands.c.id == any_(bulk.id_array("ids"))
)


def mark_processing(conn: Connection, command_ids: Collection[UUID]) -> dict[UUID, Outcome]:
    """Moves accepted commands to processing; returns the outcomes of those already finished.

    One statement: a finished row is rewritten unchanged, which only a redelivery meets.
    """
    rows = conn.execute(_MARK_PROCESSING, {"ids": list(command_ids)}).all()
    return _outcomes(command_ids, rows)


def read_chunk(
    conn: Connection, command_ids: Sequence[UUID]
) -> tuple[list[InitiateOutbound], dict[UUID, Outcome]]:
    """A campaign chunk's read, in one statement: the unfinished commands among
    ``command_ids``, in that order, and the outcomes of those already finished (a
    redelivery). Unknown ids are skipped.

    Nothing is written: a chunk's commands go from accepted straight to their outcome, in
    the transaction that writes it. A processing mark would rewrite every row once more
    (with its payload, and its indexes) for a state that lasts a fraction of a second. The
    sweeper takes a lost chunk's commands once its queue has moved past them, as it does
    for a chunk lost before it ran. Two deliveries of a chunk serialize at ``claim``.
    """
    rows = {row.id: row for row in conn.execute(_READ_CHUNK, {"ids": list(command_ids)})}
    known = [rows[command_id] for command_id in command_ids if command_id in rows]
    finished = _outcomes([row.id for row in known], known)
    todo = [_command(row.payload) for row in known if row.id not in finished]
    return todo, finished


_WAITING = (
    select(commands.c.id)
    .where(
        commands.c.workspace_id == bindparam("of_workspace"),
        commands.c.status == "accepted",
        commands.c.batch_id.is_(None),
        commands.c.created_at < func.now() - bindparam("waited", type_=Interval),
    )
    .order_by(commands.c.created_at)
    .limit(bindparam("at_most"))
    .with_for_update(skip_locked=True)
    .cte("waiting")
    .prefix_with("MATERIALIZED")
)
_TAKE_WAITING = (
    update(commands)
    .where(commands.c.id == _WAITING.c.id)
    .values(status="processing", updated_at=func.now())
    .returning(_PAYLOAD_TEXT, commands.c.created_at)
)


def take_backlog(
    conn: Connection, workspace_id: UUID, waited: timedelta, limit: int
) -> list[InitiateOutbound]:
    """Moves to processing, and returns, up to ``limit`` of the workspace's single commands
    that have waited in the queue longer than ``waited`` (oldest first, none another worker
    holds). A worker that is behind works its backlog off in chunks this way; their own
    tasks come later and find them finished, or in processing, which the claim serializes.
    """
    rows = conn.execute(
        _TAKE_WAITING, {"of_workspace": workspace_id, "waited": waited, "at_most": limit}
    ).all()
    # RETURNING follows no ORDER BY: the oldest goes first again here.
    ordered = sorted(rows, key=lambda row: row.created_at)
    return [_command(row.payload) for row in ordered]


_CLAIM = (
    select(commands.c.id, commands.c.status, commands.c.result, commands.c.error)
    .where(commands.c.id == any_(bulk.id_array("ids")))
    .order_by(commands.c.id)
    .with_for_update()
)


def claim(conn: Connection, command_ids: Collection[UUID]) -> dict[UUID, Outcome]:
    """Locks the command rows for this transaction; returns the outcomes already recorded.

    Two deliveries of one command serialize here, so the second sees the first's outcome.
    Rows are locked in id order, so two overlapping chunks cannot deadlock.
    """
    rows = conn.execute(_CLAIM, {"ids": list(command_ids)}).all()
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
    """Records the outcomes in one UPDATE, whatever their number: they travel as one JSON
    parameter (an executemany would run a statement per command on the server, and binding
    arrays costs the client more than encoding JSON)."""
    if not outcomes:
        return
    document = jsontext.dumps(
        [
            {
                "id": o.command_id,
                "status": o.status,
                "result": o.result,
                "error": o.error,
                "code": o.error["code"] if o.error else None,
            }
            for o in outcomes
        ]
    )
    conn.execute(_FINISH, {"outcomes": document})


_FINISH = text(
    "UPDATE commands SET status = outcome.status, result = outcome.result,"
    " error = outcome.error, error_code = outcome.code,"
    " updated_at = now(), completed_at = now()"
    " FROM json_to_recordset(CAST(:outcomes AS json))"
    " AS outcome(id uuid, status text, result json, error json, code text)"
    " WHERE commands.id = outcome.id"
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


_STORED = (
    commands.c.id,
    commands.c.status,
    commands.c.request_hash,
    commands.c.result,
    commands.c.error,
)


def _stored(conn: Connection, *where: Any, lock: bool = False) -> StoredCommand | None:
    query = select(*_STORED).where(*where)
    row = conn.execute(query.with_for_update() if lock else query).one_or_none()
    return StoredCommand(*row) if row is not None else None


def find_many(conn: Connection, command_ids: Collection[UUID]) -> list[StoredCommand]:
    """The recorded commands among ``command_ids``, in one statement (unknown ids skipped)."""
    rows = conn.execute(select(*_STORED).where(bulk.any_of(commands.c.id, command_ids)))
    return [StoredCommand(*row) for row in rows]


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


def discard(conn: Connection, command_id: UUID) -> bool:
    """Removes a command that never reached the broker, unless a worker took it already
    (``take_backlog`` reads waiting single commands from the table, not the queue); returns
    whether it was removed."""
    removed = conn.execute(
        delete(commands).where(commands.c.id == command_id, commands.c.status == "accepted")
    )
    return removed.rowcount == 1


def find_any(conn: Connection, command_id: UUID) -> StoredCommand | None:
    return _stored(conn, commands.c.id == command_id)


UNFINISHED = ("accepted", "processing")


@dataclass(frozen=True, slots=True)
class StaleCommand:
    """An unfinished command nobody touched for a while; ``payload`` only for a single one
    (a chunk task carries ids, a single task the command itself)."""

    id: UUID
    batch_id: UUID | None
    payload: dict[str, Any] | None


def take_stale(
    conn: Connection,
    after_s: float,
    limit: int,
    *,
    single_queued_since: datetime | None = None,
    chunk_queued_since: datetime | None = None,
) -> list[StaleCommand]:
    """The oldest unfinished commands untouched for ``after_s`` seconds, up to ``limit``,
    locked for this transaction and marked touched now, oldest first.

    ``SKIP LOCKED`` passes over rows another sweeper or a worker's write holds; the touch
    keeps every sweeper off them for another ``after_s``. A worker touches a single command
    when it marks it processing, so only a stalled or lost one stays untouched that long. A
    campaign chunk's commands stay accepted until their outcome (``read_chunk``): while the
    chunk runs they count as waiting in the queue, as below.

    An ``accepted`` command may just be waiting in its queue behind a backlog: it is taken
    only if it was last touched (recorded, or published again) before the commands of the
    oldest message still waiting in that queue were (``*_queued_since``; None: the queue is
    empty). The queues are FIFO: its own message left the queue already, or never got there.
    """
    cutoff = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, bindparam("after_s", after_s))
    single, chunk = commands.c.batch_id.is_(None), commands.c.batch_id.is_not(None)
    oldest = (
        select(commands.c.id)
        # created_at first: ix_commands_unfinished serves the scan.
        .where(
            commands.c.status.in_(UNFINISHED),
            commands.c.created_at < cutoff,
            commands.c.updated_at < cutoff,
            or_(
                commands.c.status == "processing",
                and_(single, _touched_before(single_queued_since, "single_queued_since")),
                and_(chunk, _touched_before(chunk_queued_since, "chunk_queued_since")),
            ),
        )
        .order_by(commands.c.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        # Evaluated once: as an IN (subquery), the plan may run it again and lock and
        # return more than ``limit`` rows (seen once the tables had grown).
        .cte("oldest")
        .prefix_with("MATERIALIZED")
    )
    rows = conn.execute(
        update(commands)
        .where(commands.c.id == oldest.c.id)
        .values(updated_at=func.now())
        .returning(
            commands.c.id,
            commands.c.batch_id,
            case((single, commands.c.payload)).label("payload"),
            commands.c.created_at,
        )
    ).all()
    return [
        StaleCommand(row.id, row.batch_id, row.payload)
        for row in sorted(rows, key=lambda row: (row.created_at, row.id))
    ]


def _touched_before(moment: datetime | None, name: str) -> ColumnElement[bool]:
    if moment is None:
        return true()
    return commands.c.updated_at < bindparam(name, moment, DateTime(timezone=True))


def last_touched(conn: Connection, command_ids: Collection[UUID]) -> datetime | None:
    """When the latest of these commands was last touched (None: none of them is known)."""
    if not command_ids:
        return None
    return cast(
        datetime | None,
        conn.execute(
            select(func.max(commands.c.updated_at)).where(bulk.any_of(commands.c.id, command_ids))
        ).scalar_one(),
    )
