"""Builds the CloudEvents of SPEC 6 from what a handler wrote."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from schemas.events import (
    BodyComponent,
    Control,
    ConversationCreated,
    ConversationReused,
    CreatedData,
    InitiationRejected,
    RejectionData,
    ReusedData,
    TemplateLanguage,
    TemplatePayload,
    TextParameter,
    WhatsAppTemplateMessage,
)
from worker.model import Contact, Template
from worker.rules import Eligible


def whatsapp_message(
    contact: Contact, template: Template, parameters: list[str]
) -> WhatsAppTemplateMessage:
    """The WhatsApp Cloud API body; no ``components`` for a template without placeholders."""
    components = (
        [BodyComponent(parameters=[TextParameter(text=p) for p in parameters])]
        if template.placeholder_count
        else None
    )
    return WhatsAppTemplateMessage(
        to=contact.phone,
        template=TemplatePayload(
            name=template.name,
            language=TemplateLanguage(code=template.language),
            components=components,
        ),
    )


def initiation_event(
    command: InitiateOutbound,
    eligible: Eligible,
    conversation: Mapping[Any, Any],
    previous_control: str | None,
) -> ConversationCreated | ConversationReused:
    request = command.request
    data: dict[str, Any] = {
        "command_id": command.command_id,
        "conversation_id": conversation["id"],
        "contact_id": request.contact_id,
        "channel_id": conversation["channel_id"],
        "agent_id": conversation["agent_id"],
        "brand_id": conversation["brand_id"],
        "campaign_id": request.campaign_id,
        "template_id": eligible.template.id,
        "follow_ups_count": len(request.follow_ups),
        "message": whatsapp_message(
            eligible.contact, eligible.template, request.template.parameters
        ),
    }
    envelope = {
        "id": uuid4(),
        "time": datetime.now(UTC),
        "subject": str(conversation["id"]),
        "workspaceid": command.workspace_id,
    }
    if previous_control is None:
        created = CreatedData(**data, already_initiated=False, previous_control=None)
        return ConversationCreated(**envelope, data=created)
    reused = ReusedData(
        **data, already_initiated=True, previous_control=cast(Control, previous_control)
    )
    return ConversationReused(**envelope, data=reused)


def rejection_event(command: InitiateOutbound, code: ErrorCode) -> InitiationRejected:
    return InitiationRejected(
        id=uuid4(),
        time=datetime.now(UTC),
        subject=str(command.command_id),
        workspaceid=command.workspace_id,
        data=RejectionData(
            command_id=command.command_id,
            contact_id=command.request.contact_id,
            campaign_id=command.request.campaign_id,
            code=code,
        ),
    )
