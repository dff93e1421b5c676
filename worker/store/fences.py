"""Fencing tokens per channel (SPEC 5.1): a stale lock holder cannot commit."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from sqlalchemy import Connection, Engine, any_, func, literal, select
from sqlalchemy.dialects.postgresql import insert

from worker.store import bulk
from worker.store.db import autocommit
from worker.store.tables import channel_fences


class StaleFence(Exception):
    """Someone took the channel lock after us: our lock expired while we stalled."""


_ISSUE = (
    insert(channel_fences)
    .from_select(
        ["channel_id", "token"],
        select(func.unnest(bulk.id_array("channel_ids")), literal(1)),
    )
    .on_conflict_do_update(
        index_elements=[channel_fences.c.channel_id],
        set_={"token": channel_fences.c.token + 1},
    )
    .returning(channel_fences.c.channel_id, channel_fences.c.token)
)


def issue(engine: Engine, channel_ids: Sequence[UUID]) -> dict[UUID, int]:
    """Bumps and returns the channels' tokens, in one statement that commits at once (rows
    in id order, as the locks)."""
    with autocommit(engine) as conn:
        rows = conn.execute(_ISSUE, {"channel_ids": sorted(channel_ids)})
        return {channel_id: int(token) for channel_id, token in rows}


_CURRENT = (
    select(channel_fences.c.channel_id, channel_fences.c.token)
    .where(channel_fences.c.channel_id == any_(bulk.id_array("channel_ids")))
    .order_by(channel_fences.c.channel_id)
    .with_for_update()
)


def check(conn: Connection, tokens: dict[UUID, int]) -> None:
    """Holds the channels' fence rows until commit; raises if any has a newer token."""
    current = dict(conn.execute(_CURRENT, {"channel_ids": list(tokens)}).all())
    for channel_id, token in tokens.items():
        if current[channel_id] != token:
            raise StaleFence(
                f"channel {channel_id}: token {token} superseded by {current[channel_id]}"
            )
