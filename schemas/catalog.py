"""The catalog file of SPEC 3, as loaded by ``leadscout catalog import``."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, Field

from schemas._base import CamelInput


def _storable(value: str) -> str:
    """PostgreSQL text holds no NUL character (lone surrogates fail the length check already)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000)")
    return value


Text = AfterValidator(_storable)
Name = Annotated[str, Field(min_length=1, max_length=200), Text]
Phone = Annotated[str, Field(min_length=3, max_length=32), Text]
Email = Annotated[str, Field(max_length=320), Text]
# The database's integer columns are 32-bit.
Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]


class CatalogBrand(CamelInput):
    id: UUID
    name: Name


class CatalogUser(CamelInput):
    id: UUID
    name: Name
    email: Email | None = None
    role: Literal["advisor", "admin"]
    active: bool


class CatalogAgent(CamelInput):
    id: UUID
    name: Name
    kind: Literal["prospection", "support"]
    active: bool


class CatalogChannel(CamelInput):
    id: UUID
    type: Literal["whatsapp", "sms", "email"]
    phone_number: Phone
    brand_id: UUID | None = None
    agent_id: UUID | None = None
    default_advisor_id: UUID | None = None
    active: bool
    daily_limit: Annotated[Int32, Field(ge=0)]
    priority: Int32


class CatalogTemplate(CamelInput):
    id: UUID
    name: Annotated[str, Field(min_length=1, max_length=512), Text]
    language: Annotated[str, Field(min_length=2, max_length=16), Text]
    category: Annotated[str, Field(min_length=1, max_length=32), Text]
    status: Literal["APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED"]
    body: Annotated[str, Field(min_length=1, max_length=4096), Text]
    brand_id: UUID | None = None


class CatalogContact(CamelInput):
    id: UUID
    name: Name
    phone: Phone
    email: Email | None = None
    opted_out: bool


CatalogRow = (
    CatalogBrand | CatalogUser | CatalogAgent | CatalogChannel | CatalogTemplate | CatalogContact
)

# Every kind of a catalog file and its row model, in the order an import writes them:
# a row's references (a channel's brandId, agentId, defaultAdvisorId) come before it.
CATALOG_KINDS: dict[str, type[CatalogRow]] = {
    "brands": CatalogBrand,
    "users": CatalogUser,
    "agents": CatalogAgent,
    "channels": CatalogChannel,
    "templates": CatalogTemplate,
    "contacts": CatalogContact,
}


class CatalogFile(CamelInput):
    """A whole catalog held in memory: for small files (the demo, tests).

    Ids unique per kind are checked by the import, which streams files of any size.
    """

    brands: list[CatalogBrand] = Field(default_factory=list)
    users: list[CatalogUser] = Field(default_factory=list)
    agents: list[CatalogAgent] = Field(default_factory=list)
    channels: list[CatalogChannel] = Field(default_factory=list)
    templates: list[CatalogTemplate] = Field(default_factory=list)
    contacts: list[CatalogContact] = Field(default_factory=list)
