"""Events of SPEC 6: what happened (past tense), as CloudEvents 1.0 envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from schemas._base import CamelModel, WireModel
from schemas.errors import ErrorCode

EVENT_SOURCE = "leadscout-outbound"
Control = Literal["ai", "human"]


class _Published(WireModel):
    """Members with fixed values are still required in the exported JSON Schema:
    every event carries them, so a subscriber's generated code may rely on them."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class TextParameter(_Published):
    type: Literal["text"] = "text"
    text: str


class BodyComponent(_Published):
    type: Literal["body"] = "body"
    parameters: list[TextParameter] = Field(min_length=1)


class TemplateLanguage(WireModel):
    code: str


def _is_none(value: object) -> bool:
    return value is None


def _without_default(schema: dict[str, Any]) -> None:
    schema.pop("default")  # null is never sent: the member is left out instead


Components = Annotated[list[BodyComponent], Field(min_length=1)]


class TemplatePayload(_Published):
    name: str
    language: TemplateLanguage
    # WhatsApp refuses a body component without parameters: the key is left out entirely.
    components: Components | SkipJsonSchema[None] = Field(
        default=None, exclude_if=_is_none, json_schema_extra=_without_default
    )


class WhatsAppTemplateMessage(_Published):
    """The exact body a dispatcher POSTs to the WhatsApp Cloud API ``/messages``."""

    messaging_product: Literal["whatsapp"] = "whatsapp"
    to: str
    type: Literal["template"] = "template"
    template: TemplatePayload


class InitiationData(CamelModel):
    """What a created and a reused event both carry."""

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


class CreatedData(InitiationData):
    already_initiated: Literal[False]
    previous_control: None


class ReusedData(InitiationData):
    already_initiated: Literal[True]
    previous_control: Control


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


class _Envelope(_Published):
    specversion: Literal["1.0"] = "1.0"
    id: UUID
    source: Literal["leadscout-outbound"] = "leadscout-outbound"
    time: datetime
    subject: str
    datacontenttype: Literal["application/json"] = "application/json"
    workspaceid: UUID


class ConversationCreated(_Envelope):
    type: Literal["leadscout.conversation.created"] = "leadscout.conversation.created"
    data: CreatedData


class ConversationReused(_Envelope):
    type: Literal["leadscout.conversation.reused"] = "leadscout.conversation.reused"
    data: ReusedData


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
