"""The two lifecycle calls of SPEC 4.4: hand a conversation to a human, close it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, RowMapping, select

from schemas import errors
from schemas.events import ClosedData, ConversationClosed, ConversationHandedOff, HandedOffData
from worker.store import conversations as conversation_store
from worker.store import outbox
from worker.store.tables import conversations, follow_ups, messages, users
from worker.views import conversation_detail


def find(
    conn: Connection, workspace_id: UUID, conversation_id: UUID, lock: bool = False
) -> RowMapping | None:
    query = select(conversations).where(
        conversations.c.workspace_id == workspace_id, conversations.c.id == conversation_id
    )
    return conn.execute(query.with_for_update() if lock else query).mappings().one_or_none()


def hand_off(conn: Connection, conversation: RowMapping, user_id: UUID) -> RowMapping:
    """Control to a human user of the workspace; the caller holds the row lock."""
    if conversation["status"] == "closed":
        raise errors.ConversationClosed()
    active = conn.execute(
        select(users.c.active).where(
            users.c.workspace_id == conversation["workspace_id"], users.c.id == user_id
        )
    ).scalar_one_or_none()
    if active is None:
        raise errors.HandoffUserNotFound()
    if not active:
        raise errors.HandoffUserInactive()
    updated = conversation_store.update_conversation(
        conn, conversation["id"], {"control": "human", "assigned_user_id": user_id}
    )
    data = HandedOffData(
        conversation_id=conversation["id"],
        contact_id=conversation["contact_id"],
        channel_id=conversation["channel_id"],
        user_id=user_id,
        previous_control=conversation["control"],
    )
    outbox.add(conn, ConversationHandedOff(**_envelope(conversation), data=data))
    return updated


def close(conn: Connection, conversation: RowMapping) -> RowMapping:
    """Closes it, freeing the channel for the contact; closing a closed one changes nothing."""
    if conversation["status"] == "closed":
        return conversation
    updated = conversation_store.update_conversation(conn, conversation["id"], {"status": "closed"})
    data = ClosedData(
        conversation_id=conversation["id"],
        contact_id=conversation["contact_id"],
        channel_id=conversation["channel_id"],
    )
    outbox.add(conn, ConversationClosed(**_envelope(conversation), data=data))
    return updated


def _envelope(conversation: RowMapping) -> dict[str, Any]:
    return {
        "id": uuid4(),
        "time": datetime.now(UTC),
        "subject": str(conversation["id"]),
        "workspaceid": conversation["workspace_id"],
    }


def detail(conn: Connection, conversation: RowMapping) -> dict[str, Any]:
    """SPEC 4.4's flat object, read in the caller's transaction."""
    template_messages = conn.execute(
        select(
            messages.c.kind,
            messages.c.body,
            messages.c.status,
            messages.c.template_id,
            messages.c.created_at,
        )
        .where(messages.c.conversation_id == conversation["id"], messages.c.kind == "template")
        .order_by(messages.c.seq)
    ).all()
    queued = conn.execute(
        select(follow_ups.c.position, follow_ups.c.content, follow_ups.c.status)
        .where(follow_ups.c.conversation_id == conversation["id"])
        .order_by(follow_ups.c.position)
    ).all()
    return conversation_detail(conversation, template_messages, queued)
