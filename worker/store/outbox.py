"""The transactional outbox: events leave only through rows written here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import Connection, bindparam, insert

from schemas.events import Event
from worker.store import bulk
from worker.store.tables import outbox, outbox_writes


@dataclass(frozen=True, slots=True)
class Written:
    """An event as its outbox row holds it: the row's columns and the event's JSON, encoded
    once for the row and for the worker's fast path to the stream."""

    id: UUID
    type: str
    workspace_id: UUID
    json: bytes

    @classmethod
    def of_event(cls, event: Event) -> Written:
        return cls(event.id, event.type, event.workspaceid, event.model_dump_json().encode())


def add(conn: Connection, event: Event, command_id: UUID | None = None) -> None:
    add_many(conn, [(Written.of_event(event), command_id)])


def add_many(conn: Connection, events: Sequence[tuple[Written, UUID | None]]) -> int | None:
    """Outbox rows for ``(event, command_id)`` pairs, in one write (``bulk.copy_rows``) of
    their own ``outbox_writes`` row; returns that write's id (None: no events)."""
    if not events:
        return None
    write_id: int = conn.execute(_NEW_WRITE, {"events": len(events)}).scalar_one()
    columns = ["event_id", "event_type", "workspace_id", "command_id", "payload", "write_id"]
    bulk.copy_rows(
        conn,
        outbox,
        columns,
        (
            (
                event.id,
                event.type,
                event.workspace_id,
                command_id,
                bulk.encoded_json(event.json),
                write_id,
            )
            for event, command_id in events
        ),
    )
    return write_id


_NEW_WRITE = insert(outbox_writes).values(events=bindparam("events")).returning(outbox_writes.c.id)
