"""Builds the CloudEvents of SPEC 6 for an initiation's outcome, encoded for the outbox.

The models of ``schemas.events`` define these events; here they are built as plain data in
the models' member order and encoded by pydantic-core, without validation: every member
comes from rows the worker has just read or written, and validating three nested models
per command cost about three times the encoding (a campaign builds 100,000 of them).
``tests/unit/test_event_schemas.py`` holds the output to the models, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from core import jsontext
from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from schemas.events import (
    EVENT_SOURCE,
    ConversationCreated,
    ConversationReused,
    InitiationRejected,
)
from worker.model import Contact, Template
from worker.rules import Eligible
from worker.store.outbox import Written

CREATED = str(ConversationCreated.model_fields["type"].default)
REUSED = str(ConversationReused.model_fields["type"].default)
REJECTED = str(InitiationRejected.model_fields["type"].default)


def whatsapp_message(contact: Contact, template: Template, parameters: list[str]) -> dict[str, Any]:
    """The WhatsApp Cloud API body; no ``components`` for a template without placeholders."""
    payload: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.placeholder_count:
        text_parameters = [{"type": "text", "text": p} for p in parameters]
        payload["components"] = [{"type": "body", "parameters": text_parameters}]
    return {
        "messaging_product": "whatsapp",
        "to": contact.phone,
        "type": "template",
        "template": payload,
    }


def initiation_event(
    command: InitiateOutbound,
    eligible: Eligible,
    conversation: Mapping[Any, Any],
    previous_control: str | None,
) -> Written:
    """A ``ConversationCreated`` (no previous control) or a ``ConversationReused``."""
    request = command.request
    data = {
        "commandId": command.command_id,
        "conversationId": conversation["id"],
        "contactId": request.contact_id,
        "channelId": conversation["channel_id"],
        "agentId": conversation["agent_id"],
        "brandId": conversation["brand_id"],
        "campaignId": request.campaign_id,
        "templateId": eligible.template.id,
        "followUpsCount": len(request.follow_ups),
        "alreadyInitiated": previous_control is not None,
        "previousControl": previous_control,
        "message": whatsapp_message(
            eligible.contact, eligible.template, request.template.parameters
        ),
    }
    event_type = CREATED if previous_control is None else REUSED
    return _encoded(event_type, str(conversation["id"]), command.workspace_id, data)


def rejection_event(command: InitiateOutbound, code: ErrorCode) -> Written:
    data = {
        "commandId": command.command_id,
        "contactId": command.request.contact_id,
        "campaignId": command.request.campaign_id,
        "code": code.value,
    }
    return _encoded(REJECTED, str(command.command_id), command.workspace_id, data)


def _encoded(event_type: str, subject: str, workspace_id: UUID, data: dict[str, Any]) -> Written:
    event_id = uuid4()
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "time": datetime.now(UTC),
        "subject": subject,
        "datacontenttype": "application/json",
        "workspaceid": workspace_id,
        "type": event_type,
        "data": data,
    }
    return Written(event_id, event_type, workspace_id, jsontext.dumps_bytes(envelope))
