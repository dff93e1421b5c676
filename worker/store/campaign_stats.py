"""Campaign counts of SPEC 4.5: written by the reporting subscriber, read by the API."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable
from typing import Literal, NamedTuple
from uuid import UUID

from sqlalchemy import Connection, Row, func, select
from sqlalchemy.dialects.postgresql import insert

from schemas.reporting import CampaignStats, ChannelCounts
from worker.store import bulk
from worker.store.tables import campaign_events_counted, campaign_stats

Outcome = Literal["created", "reused", "rejected"]


class Bucket(NamedTuple):
    """One counter: ``detail`` is the channel id (created, reused) or the error code (rejected)."""

    workspace_id: UUID
    campaign_id: str
    outcome: Outcome
    detail: str


def record_new_events(conn: Connection, event_ids: Collection[UUID]) -> set[UUID]:
    """Records the ids not counted before and returns them: only those may be counted now."""
    if not event_ids:
        return set()
    # Sorted, so two reporters inserting overlapping batches take row locks in one order.
    return set(conn.execute(_RECORD_NEW, {"event_ids": sorted(event_ids)}).scalars())


# One array parameter: a VALUES list would bind (and compile) one parameter per id.
_RECORD_NEW = (
    insert(campaign_events_counted)
    .from_select(["event_id"], select(func.unnest(bulk.id_array("event_ids"))))
    .on_conflict_do_nothing()
    .returning(campaign_events_counted.c.event_id)
)


def add(conn: Connection, counts: Counter[Bucket]) -> None:
    """Adds each bucket's count to its row, creating the row at the first count."""
    if not counts:
        return
    rows = [{**bucket._asdict(), "n": n} for bucket, n in sorted(counts.items())]
    statement = insert(campaign_stats).values(rows)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=list(campaign_stats.primary_key.columns),
            set_={"n": campaign_stats.c.n + statement.excluded.n},
        )
    )


def read(conn: Connection, workspace_id: UUID, campaign_id: str) -> CampaignStats:
    """The campaign's counts in this workspace; zeros when no event named it."""
    rows = conn.execute(
        select(campaign_stats.c.outcome, campaign_stats.c.detail, campaign_stats.c.n)
        .where(
            campaign_stats.c.workspace_id == workspace_id,
            campaign_stats.c.campaign_id == campaign_id,
        )
        .order_by(campaign_stats.c.outcome, campaign_stats.c.detail)
    )
    return _stats_of(campaign_id, rows)


def _stats_of(campaign_id: str, rows: Iterable[Row[str, str, int]]) -> CampaignStats:
    totals: Counter[str] = Counter()
    rejected: dict[str, int] = {}
    by_channel: dict[str, dict[str, int]] = {}
    for outcome, detail, n in rows:
        if outcome == "rejected":
            rejected[detail] = n
        else:
            totals[outcome] += n
            by_channel.setdefault(detail, {})[outcome] = n
    return CampaignStats(
        campaign_id=campaign_id,
        created=totals["created"],
        reused=totals["reused"],
        rejected=rejected,
        by_channel={channel: ChannelCounts(**counts) for channel, counts in by_channel.items()},
    )
