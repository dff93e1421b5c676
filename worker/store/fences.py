"""Fencing tokens per channel (SPEC 5.1): a stale lock holder cannot commit."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects.postgresql import insert

from worker.store.tables import channel_fences


class StaleFence(Exception):
    """Someone took the channel lock after us: our lock expired while we stalled."""


def issue(engine: Engine, channel_id: UUID) -> int:
    """Bumps and returns the channel's token, in its own committed transaction."""
    new = insert(channel_fences).values(channel_id=channel_id, token=1)
    stmt = new.on_conflict_do_update(
        index_elements=[channel_fences.c.channel_id],
        set_={"token": channel_fences.c.token + 1},
    ).returning(channel_fences.c.token)
    with engine.begin() as conn:
        return int(conn.execute(stmt).scalar_one())


def check(conn: Connection, channel_id: UUID, token: int) -> None:
    """Holds the channel's fence row until commit; raises if a newer token exists."""
    current = conn.execute(
        select(channel_fences.c.token)
        .where(channel_fences.c.channel_id == channel_id)
        .with_for_update()
    ).scalar_one()
    if current != token:
        raise StaleFence(f"channel {channel_id}: token {token} superseded by {current}")
