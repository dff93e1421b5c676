"""Conversations, their template messages and follow-ups."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, RowMapping, any_, bindparam, func, select, text, true, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert

from worker.model import Conversation
from worker.store import bulk
from worker.store.tables import channel_openings, conversations, follow_ups, messages

_CONVERSATION_FIELDS = (
    conversations.c.id,
    conversations.c.seq,
    conversations.c.channel_id,
    conversations.c.contact_id,
    conversations.c.status,
    conversations.c.control,
    conversations.c.agent_id,
    conversations.c.assigned_user_id,
    conversations.c.brand_id,
    conversations.c.campaign_id,
    conversations.c.created_at,
)


_WANTED = bulk.wanted_ids("contact_ids", "contact_id")
# Per contact, its latest conversation on each channel: all check 10 needs (the active one
# on a channel is its latest there, invariant 1). As a LATERAL subquery per contact (its
# DISTINCT ON keeps the planner from flattening it into a join, which it may run as a scan
# of the whole table while the table has no statistics yet: a first campaign's).
# No workspace condition: the contacts are the workspace's (the catalog said so), and a
# conversation is always in its contact's workspace (a composite foreign key).
_LATEST = (
    select(*_CONVERSATION_FIELDS)
    .where(conversations.c.contact_id == _WANTED.c.contact_id)
    .ext(distinct_on(conversations.c.channel_id))
    .order_by(conversations.c.channel_id, conversations.c.seq.desc())
    .lateral("latest")
)
_OF_CONTACTS = select(_LATEST).select_from(_WANTED.join(_LATEST, true())).order_by(_LATEST.c.seq)


def contact_conversations(
    conn: Connection, contact_ids: Collection[UUID]
) -> dict[UUID, tuple[Conversation, ...]]:
    """The latest conversation on each channel of these contacts (of one workspace, found
    in its catalog), grouped by contact, in creation order."""
    rows = conn.execute(_OF_CONTACTS, {"contact_ids": list(set(contact_ids))}).all()
    grouped: dict[UUID, list[Conversation]] = defaultdict(list)
    for row in rows:
        grouped[row.contact_id].append(Conversation(**row._mapping))
    return {contact_id: tuple(found) for contact_id, found in grouped.items()}


# A conversation counts in its hour's bucket; the window takes every bucket that overlaps
# the last 24 h, so a channel never opens more than its limit in any 24 h (an opening
# counts for 24 to 25 h).
_WINDOW_START = func.date_trunc("hour", func.now() - text("interval '24 hours'"))


_OPENED = (
    select(channel_openings.c.channel_id, func.sum(channel_openings.c.n))
    .where(
        channel_openings.c.channel_id == any_(bulk.id_array("channel_ids")),
        channel_openings.c.hour >= _WINDOW_START,
    )
    .group_by(channel_openings.c.channel_id)
)


def opened_last_24h(conn: Connection, channel_ids: Collection[UUID]) -> dict[UUID, int]:
    """Fresh conversations per channel in the window: at most 25 counter rows per channel."""
    rows = conn.execute(_OPENED, {"channel_ids": list(channel_ids)}).all()
    return {channel_id: int(total) for channel_id, total in rows}


_OPENING = pg_insert(channel_openings).values(
    channel_id=bindparam("opened_on"),
    hour=func.date_trunc("hour", bindparam("at")),
    n=bindparam("opened"),
)
_ADD_OPENINGS = _OPENING.on_conflict_do_update(
    index_elements=[channel_openings.c.channel_id, channel_openings.c.hour],
    set_={"n": channel_openings.c.n + _OPENING.excluded.n},
)


def count_openings(conn: Connection, opened: Counter[UUID], at: datetime) -> None:
    """Adds fresh conversations to their channels' hour of ``at`` (their ``created_at``), in
    the caller's transaction."""
    if opened:
        conn.execute(
            _ADD_OPENINGS,
            [{"opened_on": c, "opened": n, "at": at} for c, n in sorted(opened.items())],
        )


_NOW = select(func.now())


def database_time(conn: Connection) -> datetime:
    """The server's ``now()``: conversations are stamped with it, not the worker's clock."""
    return conn.execute(_NOW).scalar_one()


def insert_conversations(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Fresh conversations, ids and times included, in one write (``bulk.copy_rows``)."""
    if not rows:
        return
    columns = list(rows[0])
    bulk.copy_rows(conn, conversations, columns, ([row[c] for c in columns] for row in rows))


def lock_active(conn: Connection, conversation_id: UUID) -> str | None:
    """Row-locks the conversation; returns its control, or None if it is no longer active."""
    row = conn.execute(
        select(conversations.c.status, conversations.c.control)
        .where(conversations.c.id == conversation_id)
        .with_for_update()
    ).one_or_none()
    return row.control if row is not None and row.status == "active" else None


def update_conversation(
    conn: Connection, conversation_id: UUID, values: dict[str, Any]
) -> RowMapping:
    return (
        conn.execute(
            update(conversations)
            .where(conversations.c.id == conversation_id)
            .values(updated_at=func.now(), **values)
            .returning(conversations)
        )
        .mappings()
        .one()
    )


def add_template_messages(conn: Connection, values: list[dict[str, Any]]) -> None:
    """Template messages (``conversation_id``, ``template_id``, ``body``, ``command_id``)."""
    if not values:
        return
    columns = ["id", "conversation_id", "kind", "body", "status", "template_id", "command_id"]
    bulk.copy_rows(
        conn,
        messages,
        columns,
        (
            (
                uuid4(),
                m["conversation_id"],
                "template",
                m["body"],
                "queued",
                m["template_id"],
                m["command_id"],
            )
            for m in values
        ),
    )


def add_follow_ups(conn: Connection, values: list[dict[str, Any]]) -> None:
    """Follow-ups (``conversation_id``, ``position``, ``content``, ``command_id``)."""
    if not values:
        return
    columns = ["conversation_id", "position", "content", "status", "command_id"]
    bulk.copy_rows(
        conn,
        follow_ups,
        columns,
        (
            (f["conversation_id"], f["position"], f["content"], "pending", f["command_id"])
            for f in values
        ),
    )


def last_follow_up_position(conn: Connection, conversation_id: UUID) -> int:
    """Where the conversation's follow-ups end (the caller holds its row lock)."""
    return int(
        conn.execute(
            select(func.coalesce(func.max(follow_ups.c.position), 0)).where(
                follow_ups.c.conversation_id == conversation_id
            )
        ).scalar_one()
    )
