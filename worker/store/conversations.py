"""Conversations, their template messages and follow-ups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, RowMapping, func, insert, select, text, update

from worker.model import ContactState, Conversation
from worker.store.tables import conversations, follow_ups, messages

_CONVERSATION_FIELDS = (
    conversations.c.id,
    conversations.c.seq,
    conversations.c.channel_id,
    conversations.c.contact_id,
    conversations.c.status,
    conversations.c.control,
    conversations.c.agent_id,
    conversations.c.assigned_user_id,
    conversations.c.brand_id,
    conversations.c.campaign_id,
    conversations.c.created_at,
)


def contact_state(
    conn: Connection, workspace_id: UUID, contact_id: UUID, channel_ids: Sequence[UUID]
) -> ContactState:
    """The contact's conversations, and how many fresh ones each channel opened in 24 h."""
    rows = conn.execute(
        select(*_CONVERSATION_FIELDS).where(
            conversations.c.workspace_id == workspace_id,
            conversations.c.contact_id == contact_id,
        )
    ).all()
    return ContactState(
        conversations=tuple(Conversation(**row._mapping) for row in rows),
        opened_last_24h=opened_last_24h(conn, channel_ids),
    )


def opened_last_24h(conn: Connection, channel_ids: Sequence[UUID]) -> dict[UUID, int]:
    rows = conn.execute(
        select(conversations.c.channel_id, func.count())
        .where(
            conversations.c.channel_id.in_(channel_ids),
            conversations.c.created_at > func.now() - text("interval '24 hours'"),
        )
        .group_by(conversations.c.channel_id)
    ).all()
    return {channel_id: count for channel_id, count in rows}


def insert_conversation(conn: Connection, values: dict[str, Any]) -> RowMapping:
    return (
        conn.execute(insert(conversations).values(id=uuid4(), **values).returning(conversations))
        .mappings()
        .one()
    )


def lock_active(conn: Connection, conversation_id: UUID) -> str | None:
    """Row-locks the conversation; returns its control, or None if it is no longer active."""
    row = conn.execute(
        select(conversations.c.status, conversations.c.control)
        .where(conversations.c.id == conversation_id)
        .with_for_update()
    ).one_or_none()
    return row.control if row is not None and row.status == "active" else None


def update_conversation(
    conn: Connection, conversation_id: UUID, values: dict[str, Any]
) -> RowMapping:
    return (
        conn.execute(
            update(conversations)
            .where(conversations.c.id == conversation_id)
            .values(updated_at=func.now(), **values)
            .returning(conversations)
        )
        .mappings()
        .one()
    )


def add_template_message(
    conn: Connection, conversation_id: UUID, template_id: UUID, body: str, command_id: UUID
) -> None:
    conn.execute(
        insert(messages).values(
            id=uuid4(),
            conversation_id=conversation_id,
            kind="template",
            body=body,
            status="queued",
            template_id=template_id,
            command_id=command_id,
        )
    )


def append_follow_ups(
    conn: Connection, conversation_id: UUID, contents: list[dict[str, Any]], command_id: UUID
) -> None:
    """Stores follow-ups after the conversation's last position (the caller holds its row lock)."""
    if not contents:
        return
    last = conn.execute(
        select(func.coalesce(func.max(follow_ups.c.position), 0)).where(
            follow_ups.c.conversation_id == conversation_id
        )
    ).scalar_one()
    conn.execute(
        insert(follow_ups),
        [
            {
                "conversation_id": conversation_id,
                "position": last + offset,
                "content": content,
                "status": "pending",
                "command_id": command_id,
            }
            for offset, content in enumerate(contents, start=1)
        ],
    )
