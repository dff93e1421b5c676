"""The catalog file of SPEC 3, as loaded by ``leadscout catalog import``."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import Field, model_validator

from schemas._base import CamelInput

Name = Field(min_length=1, max_length=200)
Phone = Field(min_length=3, max_length=32)


class CatalogBrand(CamelInput):
    id: UUID
    name: str = Name


class CatalogUser(CamelInput):
    id: UUID
    name: str = Name
    email: str | None = Field(default=None, max_length=320)
    role: Literal["advisor", "admin"]
    active: bool


class CatalogAgent(CamelInput):
    id: UUID
    name: str = Name
    kind: Literal["prospection", "support"]
    active: bool


class CatalogChannel(CamelInput):
    id: UUID
    type: Literal["whatsapp", "sms", "email"]
    phone_number: str = Phone
    brand_id: UUID | None = None
    agent_id: UUID | None = None
    default_advisor_id: UUID | None = None
    active: bool
    daily_limit: int = Field(ge=0)
    priority: int


class CatalogTemplate(CamelInput):
    id: UUID
    name: str = Field(min_length=1, max_length=512)
    language: str = Field(min_length=2, max_length=16)
    category: str = Field(min_length=1, max_length=32)
    status: Literal["APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED"]
    body: str = Field(min_length=1, max_length=4096)
    brand_id: UUID | None = None


class CatalogContact(CamelInput):
    id: UUID
    name: str = Name
    phone: str = Phone
    email: str | None = Field(default=None, max_length=320)
    opted_out: bool


class CatalogFile(CamelInput):
    brands: list[CatalogBrand] = Field(default_factory=list)
    users: list[CatalogUser] = Field(default_factory=list)
    agents: list[CatalogAgent] = Field(default_factory=list)
    channels: list[CatalogChannel] = Field(default_factory=list)
    templates: list[CatalogTemplate] = Field(default_factory=list)
    contacts: list[CatalogContact] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ids_unique_per_kind(self) -> CatalogFile:
        for kind in ("brands", "users", "agents", "channels", "templates", "contacts"):
            ids = [row.id for row in getattr(self, kind)]
            duplicates = {str(i) for i in ids if ids.count(i) > 1}
            if duplicates:
                raise ValueError(f"{kind}: duplicate id {sorted(duplicates)[0]}")
        return self
