"""The transactional outbox: events leave only through rows written here."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Connection, insert

from schemas.events import Event
from worker.store.tables import outbox


def add(conn: Connection, event: Event, command_id: UUID | None = None) -> None:
    conn.execute(
        insert(outbox).values(
            event_id=event.id,
            event_type=event.type,
            workspace_id=event.workspaceid,
            command_id=command_id,
            payload=event.model_dump(mode="json"),
        )
    )
