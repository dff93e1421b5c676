"""Scenario 7: 200 concurrent clients on the same 20 contacts, with and without
``forceSend``, sync and async mixed: 400 initiations, 20 per contact."""

from __future__ import annotations

from collections import Counter
from uuid import UUID

import pytest
from sqlalchemy import Engine, text

from tests.faults.harness import (
    STREAM,
    SinglesRun,
    StreamWatch,
    accepted_ids,
    request_body,
    volume_workspace,
)
from tests.faults.invariants import count, wait_all_terminal

CONTACTS, CLIENTS, PER_CONTACT = 20, 200, 20
CAMPAIGN = "faults-contention"


def forced(index: int) -> bool:
    return (index // CONTACTS) % 2 == 0


def waits(index: int) -> bool:
    return (index // (2 * CONTACTS)) % 2 == 1


@pytest.mark.slow
def test_200_clients_on_20_contacts(fault_stack, fault_engine, fault_redis, fault_world):
    """Per contact, 20 requests: forceSend or not, sync or async, five of each pair, all
    sent at once by 200 clients."""
    ws = volume_workspace(fault_world, CONTACTS)
    bodies = [
        request_body(ws, ws.contacts[i % CONTACTS], CAMPAIGN, forceSend=forced(i))
        for i in range(CONTACTS * PER_CONTACT)
    ]
    fault_stack.start()

    with StreamWatch(fault_stack.servers.redis_url) as watch:
        url = fault_stack.base_url + ws.base + "/outbound"
        run = SinglesRun(url, ws.headers, bodies, max_clients=CLIENTS, sync=waits)
        replies = run.start().join()
        wait_all_terminal(fault_engine, ws.workspace_id, 120)
        watch.settle()
        counts = count(
            fault_engine,
            fault_redis,
            STREAM,
            ws.workspace_id,
            CAMPAIGN,
            label="7 contention",
            watch=watch,
            client_accepted=accepted_ids(replies),
        )

    # A sync request answered 409 AllProviderChannelsOccupied was accepted and failed.
    assert {reply.status for reply in replies} <= {200, 202, 409}
    refused = [i for i, reply in enumerate(replies) if reply.status == 409]
    assert {(forced(i), waits(i)) for i in refused} <= {(False, True)}
    counts.assert_kept()
    assert counts.accepted == CONTACTS * PER_CONTACT
    # Each contact gets one conversation on each of the three channels, from whichever of
    # its requests come first; after that, forceSend reuses one, and the others are refused.
    outcomes = outcomes_by_force(fault_engine, ws.workspace_id)
    assert outcomes["created", True] + outcomes["created", False] == CONTACTS * 3
    assert conversations(fault_engine, ws.workspace_id) == CONTACTS * 3
    assert outcomes["reused", True] + outcomes["created", True] == CONTACTS * PER_CONTACT // 2
    assert outcomes["AllProviderChannelsOccupied", False] + outcomes["created", False] == (
        CONTACTS * PER_CONTACT // 2
    )
    assert sum(outcomes.values()) == CONTACTS * PER_CONTACT


def outcomes_by_force(engine: Engine, workspace_id: UUID) -> Counter[tuple[str, bool]]:
    """(created | reused | error code, forceSend) of every finished command."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """SELECT CASE WHEN status = 'failed' THEN error_code
                              WHEN (result->>'alreadyInitiated')::boolean THEN 'reused'
                              ELSE 'created' END AS outcome,
                          coalesce((payload->'request'->>'forceSend')::boolean, false) AS forced,
                          count(*) AS n
                   FROM commands WHERE workspace_id = :w GROUP BY 1, 2"""
            ),
            {"w": workspace_id},
        )
        return Counter({(row.outcome, row.forced): row.n for row in rows})


def conversations(engine: Engine, workspace_id: UUID) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM conversations WHERE workspace_id = :w"),
                {"w": workspace_id},
            ).scalar_one()
        )
