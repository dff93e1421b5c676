"""HTTP API bodies of SPEC 4.3: a campaign's fan-out, and where its batch stands."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, BaseModel, Field, StrictBool, StrictStr
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from schemas._base import CamelInput, CamelModel
from schemas.api import (
    MAX_ADDITIONAL_MESSAGES,
    AdditionalMessage,
    CampaignId,
    Context,
    HandoffOverride,
    InitiateOutboundRequest,
)

MAX_BATCH_ITEMS = 10_000


def deep_merge(base: Any, override: Any) -> Any:
    """SPEC 4.3's merge: objects merge member by member, anything else in ``override`` wins."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if key in base else value
    return merged


class TemplatePart(CamelInput):
    """``template`` as defaults or an item may send it: the other may give the rest."""

    template_id: UUID | None = None
    parameters: list[StrictStr] | None = Field(default=None, max_length=100)


class RequestDefaults(CamelInput):
    """``defaults``: any member of SPEC 4.1's request but ``contactId`` and ``campaignId``."""

    template: TemplatePart | None = None
    additional_messages: list[AdditionalMessage] | None = Field(
        default=None, max_length=MAX_ADDITIONAL_MESSAGES
    )
    context: Context | None = None
    opt_in: dict[str, Any] | None = None
    handoff_override: HandoffOverride | None = None
    brand_id: UUID | None = None
    provider_channel_id: UUID | None = None
    force_send: StrictBool = False


class BatchItem(RequestDefaults):
    """An item: its contactId, and any member of defaults to override. Merged with defaults
    it must be a valid InitiateOutboundRequest; an item that is not is listed in `invalid`
    and the others go on (so this schema documents items, the merge checks them)."""

    contact_id: UUID


@dataclass(frozen=True, slots=True)
class _DocumentedAs:
    """Validates nothing; the JSON Schema says what the value should look like."""

    model: type[BaseModel]

    def __get_pydantic_json_schema__(self, _schema: CoreSchema, handler: Any) -> JsonSchemaValue:
        generated: JsonSchemaValue = handler(self.model.__pydantic_core_schema__)
        return generated


def _without_campaign_id(item: Any) -> Any:
    if isinstance(item, dict) and "campaignId" in item:
        raise PydanticCustomError(
            "campaign_id_in_item", "campaignId is given once, at the top level of the batch"
        )
    return item


Item = Annotated[Any, AfterValidator(_without_campaign_id), _DocumentedAs(BatchItem)]


class InitiateOutboundBatchRequest(CamelInput):
    """Body of ``POST /v1/workspaces/{workspaceId}/leadscout/outbound/batch``."""

    campaign_id: CampaignId
    defaults: RequestDefaults | None = None
    items: list[Item] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)

    @cached_property
    def defaults_as_sent(self) -> dict[str, Any]:
        """``defaults`` with only the members the client sent (``exclude_unset``)."""
        if self.defaults is None:
            return {}
        return self.defaults.model_dump(mode="json", exclude_unset=True)

    def item_request(self, item: Any) -> InitiateOutboundRequest:
        """The item as SPEC 4.3 reads it: the defaults deep-merged with the item, and the
        batch's campaignId. A member it takes from the defaults counts as sent by it.

        Raises pydantic's ValidationError, with locations inside the merged item.
        """
        merged = deep_merge(self.defaults_as_sent, item)
        if isinstance(merged, dict):
            merged = {**merged, "campaignId": self.campaign_id}
        return InitiateOutboundRequest.model_validate(merged)


class FieldError(CamelModel):
    loc: list[str | int] = Field(description="Where, from the body: `body`, `items`, index, ...")
    msg: str


class InvalidItem(CamelModel):
    """An item that is not a valid request once merged: not a command, not counted."""

    index: int = Field(description="Its position in `items`, from 0.")
    errors: list[FieldError]


class BatchAccepted(CamelModel):
    """The 202 body: every accepted item is a durable command."""

    batch_id: UUID
    accepted: int
    invalid: list[InvalidItem]


class BatchCounts(CamelModel):
    accepted: int
    processing: int
    succeeded: int
    failed: int


class BatchStatus(CamelModel):
    """Body of ``GET .../batches/{batchId}``: ``counts`` sums to ``total``."""

    batch_id: UUID
    campaign_id: str
    total: int = Field(description="The accepted items.")
    counts: BatchCounts
    errors: dict[str, int] = Field(description="Error code → failed items.")
