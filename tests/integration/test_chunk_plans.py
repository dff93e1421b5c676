"""A chunk's reads look each of its ids up, whatever the table's size: planned as a join,
a thousand ids at once made the planner hash the whole contacts table instead, a cost
that grows with every import."""

from __future__ import annotations

from uuid import UUID, uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine, text
from sqlalchemy.dialects import postgresql

from schemas.api import InitiateOutboundRequest
from tests.world import World, body
from worker.store import catalog
from worker.tasks import CHUNK_SIZE

CONTACTS = 20_000
CHUNK = CHUNK_SIZE  # a campaign task's ids


@pytest.fixture
def contact_ids(engine: Engine, redis: Redis) -> tuple[UUID, list[UUID]]:
    world = World(engine, redis)
    ids = world.contacts(CONTACTS)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE contacts"))
    return world.workspace_id, ids


def plan(engine: Engine, workspace_id: UUID, ids: list[UUID]) -> str:
    """The plan of the catalog's contact read for these ids, as a first execution gets it
    (the values in hand, not a generic prepared plan)."""
    compiled = catalog._CONTACTS_AND_VERSION.compile(dialect=postgresql.dialect())
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN " + str(compiled), {"of_workspace": workspace_id, "ids": ids}
        ).all()
    return "\n".join(row[0] for row in rows)


def test_a_chunk_of_contacts_is_read_by_lookups_not_a_scan(engine, contact_ids):
    workspace_id, ids = contact_ids

    shown = plan(engine, workspace_id, ids[:CHUNK])

    assert "Index Scan using pk_contacts on contacts" in shown
    assert "Seq Scan on contacts" not in shown


def test_the_read_returns_each_contact_once(engine, contact_ids):
    workspace_id, ids = contact_ids

    with engine.connect() as conn:
        found = catalog.load(conn, workspace_id, [request(i) for i in ids[:CHUNK]])

    assert sorted(found.contacts) == sorted(ids[:CHUNK])


def request(contact_id: UUID) -> InitiateOutboundRequest:
    return InitiateOutboundRequest.model_validate(body(contact_id, uuid4()))
