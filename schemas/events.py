"""Events of SPEC 6: what happened (past tense), as CloudEvents 1.0 envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import SerializerFunctionWrapHandler, model_serializer

from schemas._base import CamelModel, WireModel
from schemas.errors import ErrorCode

EVENT_SOURCE = "leadscout-outbound"
Control = Literal["ai", "human"]


class TextParameter(WireModel):
    type: Literal["text"] = "text"
    text: str


class BodyComponent(WireModel):
    type: Literal["body"] = "body"
    parameters: list[TextParameter]


class TemplateLanguage(WireModel):
    code: str


class TemplatePayload(WireModel):
    name: str
    language: TemplateLanguage
    components: list[BodyComponent] | None = None

    @model_serializer(mode="wrap")
    def _omit_empty_components(self, handler: SerializerFunctionWrapHandler) -> Any:
        # WhatsApp refuses a body component without parameters: drop the key entirely.
        data = handler(self)
        if data.get("components") is None:
            data.pop("components", None)
        return data


class WhatsAppTemplateMessage(WireModel):
    """The exact body a dispatcher POSTs to the WhatsApp Cloud API ``/messages``."""

    messaging_product: Literal["whatsapp"] = "whatsapp"
    to: str
    type: Literal["template"] = "template"
    template: TemplatePayload


class InitiationData(CamelModel):
    command_id: UUID
    conversation_id: UUID
    contact_id: UUID
    channel_id: UUID
    agent_id: UUID | None
    brand_id: UUID | None
    campaign_id: str | None
    template_id: UUID
    follow_ups_count: int
    already_initiated: bool
    previous_control: Control | None
    message: WhatsAppTemplateMessage


class RejectionData(CamelModel):
    command_id: UUID
    contact_id: UUID
    campaign_id: str | None
    code: ErrorCode


class HandedOffData(CamelModel):
    conversation_id: UUID
    contact_id: UUID
    channel_id: UUID
    user_id: UUID
    previous_control: Control


class ClosedData(CamelModel):
    conversation_id: UUID
    contact_id: UUID
    channel_id: UUID


class _Envelope(WireModel):
    specversion: Literal["1.0"] = "1.0"
    id: UUID
    source: Literal["leadscout-outbound"] = "leadscout-outbound"
    time: datetime
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    workspaceid: UUID


class ConversationCreated(_Envelope):
    type: Literal["leadscout.conversation.created"] = "leadscout.conversation.created"
    data: InitiationData


class ConversationReused(_Envelope):
    type: Literal["leadscout.conversation.reused"] = "leadscout.conversation.reused"
    data: InitiationData


class InitiationRejected(_Envelope):
    type: Literal["leadscout.initiation.rejected"] = "leadscout.initiation.rejected"
    data: RejectionData


class ConversationHandedOff(_Envelope):
    type: Literal["leadscout.conversation.handed_off"] = "leadscout.conversation.handed_off"
    data: HandedOffData


class ConversationClosed(_Envelope):
    type: Literal["leadscout.conversation.closed"] = "leadscout.conversation.closed"
    data: ClosedData


Event = (
    ConversationCreated
    | ConversationReused
    | InitiationRejected
    | ConversationHandedOff
    | ConversationClosed
)
EVENT_CLASSES: tuple[type[_Envelope], ...] = (
    ConversationCreated,
    ConversationReused,
    InitiationRejected,
    ConversationHandedOff,
    ConversationClosed,
)
