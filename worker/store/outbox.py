"""The transactional outbox: events leave only through rows written here."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import Connection, insert

from schemas.events import Event
from worker.store.tables import outbox


def add(conn: Connection, event: Event, command_id: UUID | None = None) -> None:
    add_many(conn, [(event, command_id)])


def add_many(conn: Connection, events: Sequence[tuple[Event, UUID | None]]) -> None:
    """Outbox rows for ``(event, command_id)`` pairs, in one batched statement."""
    if not events:
        return
    conn.execute(
        insert(outbox),
        [
            {
                "event_id": event.id,
                "event_type": event.type,
                "workspace_id": event.workspaceid,
                "command_id": command_id,
                "payload": event.model_dump(mode="json"),
            }
            for event, command_id in events
        ],
    )
