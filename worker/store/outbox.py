"""The transactional outbox: events leave only through rows written here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from schemas.events import Event
from worker.store import bulk
from worker.store.tables import outbox


def add(conn: Connection, event: Event, command_id: UUID | None = None) -> None:
    add_many(conn, [(event, command_id)])


def add_many(conn: Connection, events: Sequence[tuple[Event, UUID | None]]) -> list[dict[str, Any]]:
    """Outbox rows for ``(event, command_id)`` pairs, in one write (``bulk.copy_rows``);
    returns their payloads
    (for the worker's fast path, which sends them without reading them back)."""
    if not events:
        return []
    payloads = [event.model_dump(mode="json") for event, _ in events]
    columns = ["event_id", "event_type", "workspace_id", "command_id", "payload"]
    bulk.copy_rows(
        conn,
        outbox,
        columns,
        (
            (event.id, event.type, event.workspaceid, command_id, payload)
            for (event, command_id), payload in zip(events, payloads, strict=True)
        ),
    )
    return payloads
