"""The transactional outbox: events leave only through rows written here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from sqlalchemy import Connection

from schemas.events import Event
from worker.store import bulk
from worker.store.tables import outbox


@dataclass(frozen=True, slots=True)
class Written:
    """An event as its outbox row holds it: its id and its JSON, encoded once for the row
    and for the worker's fast path to the stream."""

    id: UUID
    json: bytes

    @classmethod
    def of_event(cls, event: Event) -> Written:
        return cls(event.id, event.model_dump_json().encode())


def add(conn: Connection, event: Event, command_id: UUID | None = None) -> None:
    add_many(conn, [(event, command_id)])


def add_many(conn: Connection, events: Sequence[tuple[Event, UUID | None]]) -> list[Written]:
    """Outbox rows for ``(event, command_id)`` pairs, in one write (``bulk.copy_rows``);
    returns what they hold (for the worker's fast path, which sends them without reading
    them back)."""
    written = [Written.of_event(event) for event, _ in events]
    columns = ["event_id", "event_type", "workspace_id", "command_id", "payload"]
    bulk.copy_rows(
        conn,
        outbox,
        columns,
        (
            (event.id, event.type, event.workspaceid, command_id, bulk.encoded_json(row.json))
            for (event, command_id), row in zip(events, written, strict=True)
        ),
    )
    return written
