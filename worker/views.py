"""How conversations look from outside: the JSON bodies of SPEC 4.1 and 4.4, free of I/O.

The handler (4.1's answer), the rules (a blocking conversation) and the lifecycle
calls (4.4's flat object) all present conversations through this one module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from uuid import UUID

from sqlalchemy import Row

from worker.model import Contact, Conversation, Template

AnyRow = Row[*tuple[Any, ...]]


def rfc3339(moment: datetime) -> str:
    # The offset is part of the key: equal instants in two zones compare (and hash) equal.
    return _rfc3339(moment, moment.utcoffset())


@lru_cache(maxsize=64)
def _rfc3339(moment: datetime, _offset: timedelta | None) -> str:
    # Cached: a chunk's conversations share one transaction time, written twice in each
    # of its up to 2,000 answers.
    return moment.isoformat().replace("+00:00", "Z")


def _text(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def conversation_view(row: Mapping[Any, Any]) -> dict[str, Any]:
    """SPEC 4.1's ``conversation`` member, in its order."""
    return {
        "id": str(row["id"]),
        "workspaceId": str(row["workspace_id"]),
        "status": row["status"],
        "control": row["control"],
        "agentId": _text(row["agent_id"]),
        "channelId": str(row["channel_id"]),
        "contactId": str(row["contact_id"]),
        "assignedUserId": _text(row["assigned_user_id"]),
        "brandId": _text(row["brand_id"]),
        "campaignId": row["campaign_id"],
        "createdAt": rfc3339(row["created_at"]),
        "updatedAt": rfc3339(row["updated_at"]),
    }


def blocking_view(conversation: Conversation) -> dict[str, object]:
    """SPEC 4.1's ``blockingConversation`` of an ``ActiveConversationExists``."""
    return {
        "id": str(conversation.id),
        "status": conversation.status,
        "control": conversation.control,
        "channelId": str(conversation.channel_id),
        "agentId": _text(conversation.agent_id),
        "assignedUserId": _text(conversation.assigned_user_id),
        "campaignId": conversation.campaign_id,
        "createdAt": rfc3339(conversation.created_at),
    }


def initiation_result(
    command_id: UUID,
    conversation: Mapping[Any, Any],
    contact: Contact,
    template: Template,
    rendered: str,
    *,
    follow_ups_count: int,
    already_initiated: bool,
) -> dict[str, Any]:
    """The 200 body of SPEC 4.1."""
    return {
        "conversation": conversation_view(conversation),
        "contact": {"id": str(contact.id), "name": contact.name, "phone": contact.phone},
        "template": {
            "id": str(template.id),
            "name": template.name,
            "language": template.language,
            "category": template.category,
            "renderedBody": rendered,
        },
        "followUpsCount": follow_ups_count,
        "alreadyInitiated": already_initiated,
        "commandId": str(command_id),
    }


def conversation_detail(
    conversation: Mapping[Any, Any],
    template_messages: Sequence[AnyRow],
    follow_ups: Sequence[AnyRow],
) -> dict[str, Any]:
    """SPEC 4.4's flat object: the conversation, its template messages and follow-ups."""
    return {
        **conversation_view(conversation),
        "messages": [
            {
                "kind": m.kind,
                "body": m.body,
                "status": m.status,
                "templateId": _text(m.template_id),
                "createdAt": rfc3339(m.created_at),
            }
            for m in template_messages
        ],
        "followUps": [
            {"position": f.position, "content": f.content, "status": f.status} for f in follow_ups
        ],
        "context": conversation["context"],
        "optIn": conversation["opt_in"],
    }
