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


def add_many(conn: Connection, events: Sequence[tuple[Written, UUID | None]]) -> None:
    """Outbox rows for ``(event, command_id)`` pairs, in one write (``bulk.copy_rows``)."""
    columns = ["event_id", "event_type", "workspace_id", "command_id", "payload"]
    bulk.copy_rows(
        conn,
        outbox,
        columns,
        (
            (event.id, event.type, event.workspace_id, command_id, bulk.encoded_json(event.json))
            for event, command_id in events
        ),
    )
