"""What the rules read: plain snapshots of catalog rows and conversation state."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

_PLACEHOLDER = re.compile(r"\{\{\s*([1-9][0-9]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class Template:
    id: UUID
    name: str
    language: str
    category: str
    status: str
    body: str
    # ``n`` of SPEC 3: the highest placeholder number, 0 if none. Read for every command of
    # a chunk, so counted once per template snapshot.
    placeholder_count: int = field(init=False)

    def __post_init__(self) -> None:
        count = max((int(n) for n in _PLACEHOLDER.findall(self.body)), default=0)
        object.__setattr__(self, "placeholder_count", count)

    def render(self, parameters: list[str]) -> str:
        return _PLACEHOLDER.sub(lambda m: parameters[int(m.group(1)) - 1], self.body)


@dataclass(frozen=True, slots=True)
class Contact:
    id: UUID
    name: str
    phone: str
    opted_out: bool


@dataclass(frozen=True, slots=True)
class Channel:
    id: UUID
    type: str
    active: bool
    brand_id: UUID | None
    agent_id: UUID | None
    default_advisor_id: UUID | None
    daily_limit: int
    priority: int


@dataclass(frozen=True, slots=True)
class Agent:
    id: UUID
    kind: str
    active: bool


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    active: bool


@dataclass(frozen=True, slots=True)
class Catalog:
    """The slice of one workspace's catalog a set of commands needs."""

    templates: dict[UUID, Template]
    contacts: dict[UUID, Contact]
    brand_ids: frozenset[UUID]
    channels: dict[UUID, Channel]
    agents: dict[UUID, Agent]
    users: dict[UUID, User]


@dataclass(frozen=True, slots=True)
class Conversation:
    id: UUID
    seq: int
    channel_id: UUID
    contact_id: UUID
    status: str
    control: str
    agent_id: UUID | None
    assigned_user_id: UUID | None
    brand_id: UUID | None
    campaign_id: str | None
    created_at: datetime

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True, slots=True)
class ContactState:
    """A contact's conversations and the channels' quota use, as read at one moment."""

    conversations: tuple[Conversation, ...]
    opened_last_24h: dict[UUID, int] = field(default_factory=dict)

    def active_on(self, channel_id: UUID) -> Conversation | None:
        return next(
            (c for c in self.conversations if c.active and c.channel_id == channel_id), None
        )

    def last_seq_by_channel(self) -> dict[UUID, int]:
        """The latest conversation's ``seq`` on each channel the contact was reached on."""
        latest: dict[UUID, int] = {}
        for c in self.conversations:
            latest[c.channel_id] = max(c.seq, latest.get(c.channel_id, c.seq))
        return latest

    def remaining_quota(self, channel: Channel) -> int:
        return channel.daily_limit - self.opened_last_24h.get(channel.id, 0)
