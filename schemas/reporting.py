"""SPEC 4.5: a campaign's counts, as the reporting subscriber built them from events."""

from __future__ import annotations

from pydantic import Field

from schemas._base import CamelModel


class ChannelCounts(CamelModel):
    created: int = 0
    reused: int = 0


class CampaignStats(CamelModel):
    """Per (workspace, campaign); a campaign no event named answers zeros."""

    campaign_id: str
    created: int = 0
    reused: int = 0
    rejected: dict[str, int] = Field(default_factory=dict, description="Error code → count.")
    by_channel: dict[str, ChannelCounts] = Field(
        default_factory=dict, description="Channel id → its created and reused counts."
    )
