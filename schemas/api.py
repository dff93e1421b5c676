"""HTTP API bodies of SPEC 4.1 and 4.2."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import Field, StrictBool, StrictStr

from schemas._base import CamelInput, CamelModel

MAX_ADDITIONAL_MESSAGES = 5
MAX_TEXT_LENGTH = 4096
CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"

CampaignId = Annotated[str, Field(pattern=CAMPAIGN_ID_PATTERN, max_length=128)]
Url = Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^https?://\S+$")]
MimeType = Annotated[str, Field(min_length=3, max_length=255, pattern=r"^[\w.+-]+/[\w.+-]+$")]
Caption = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]


class TemplateRef(CamelInput):
    template_id: UUID
    parameters: list[StrictStr] = Field(default_factory=list, max_length=100)


class TextMessage(CamelInput):
    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_LENGTH)]


class MediaMessage(CamelInput):
    type: Literal["media"]
    media_url: Url
    mime_type: MimeType
    caption: Caption | None = None


AdditionalMessage = Annotated[TextMessage | MediaMessage, Field(discriminator="type")]


class ContextMedia(CamelInput):
    url: Url
    mime_type: MimeType
    caption: Caption | None = None


class Context(CamelInput):
    notes: list[Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]] = Field(
        default_factory=list, max_length=100
    )
    media: list[ContextMedia] = Field(default_factory=list, max_length=100)


class HandoffOverride(CamelInput):
    user_id: UUID


class InitiateOutboundRequest(CamelInput):
    """Body of ``POST /v1/workspaces/{workspaceId}/leadscout/outbound``."""

    contact_id: UUID
    template: TemplateRef
    additional_messages: list[AdditionalMessage] | None = Field(
        default=None, max_length=MAX_ADDITIONAL_MESSAGES
    )
    context: Context | None = None
    opt_in: dict[str, Any] | None = None
    handoff_override: HandoffOverride | None = None
    brand_id: UUID | None = None
    campaign_id: CampaignId | None = None
    provider_channel_id: UUID | None = None
    force_send: StrictBool = False

    @property
    def follow_ups(self) -> list[TextMessage | MediaMessage]:
        return list(self.additional_messages or [])


class ConversationView(CamelModel):
    id: UUID
    workspace_id: UUID
    status: Literal["active", "closed"]
    control: Literal["ai", "human"]
    agent_id: UUID | None
    channel_id: UUID
    contact_id: UUID
    assigned_user_id: UUID | None
    brand_id: UUID | None
    campaign_id: str | None
    created_at: datetime
    updated_at: datetime


class ContactView(CamelModel):
    id: UUID
    name: str
    phone: str


class TemplateView(CamelModel):
    id: UUID
    name: str
    language: str
    category: str
    rendered_body: str


class InitiateOutboundResult(CamelModel):
    """The 200 body of SPEC 4.1."""

    conversation: ConversationView
    contact: ContactView
    template: TemplateView
    follow_ups_count: int
    already_initiated: bool
    command_id: UUID


class BlockingConversation(CamelModel):
    id: UUID
    status: Literal["active", "closed"]
    control: Literal["ai", "human"]
    channel_id: UUID
    agent_id: UUID | None
    assigned_user_id: UUID | None
    campaign_id: str | None
    created_at: datetime


CommandState = Literal["accepted", "processing", "succeeded", "failed"]


class CommandStatus(CamelModel):
    """Body of ``GET .../commands/{commandId}``."""

    command_id: UUID
    status: CommandState
    result: InitiateOutboundResult | None = None
    error: dict[str, Any] | None = None
