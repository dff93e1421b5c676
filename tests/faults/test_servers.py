"""Scenarios 2 and 3: Redis restarted without persistence, PostgreSQL crashed and started
again, each mid-batch with single initiations in flight. Nothing is restarted but the
server: the API, the workers, the relay and the reporter must recover on their own."""

from __future__ import annotations

import pytest

from tests.faults.conftest import needs_own
from tests.faults.harness import STREAM, restart_postgres, restart_redis, unread_entries
from tests.faults.scenario import (
    BATCH_LEADS,
    REPAIR_BOUND_S,
    batch_and_singles_with_a_fault,
    tenants,
)
from tests.processes import wait_until
from worker.reporter import GROUP as REPORTER_GROUP

# While a server is down the API answers 503 (nothing accepted); a request caught by the
# fault in mid-flight may lose its connection (no answer): neither is counted as accepted.
REFUSED = {503, None}


@pytest.mark.slow
def test_redis_restarted_without_persistence_mid_batch(
    fault_servers, fault_stack, fault_engine, fault_redis, fault_world
):
    """Every queued message, the stream, the locks and the consumer group are lost. The
    reporter is paused for a moment first (and resumed after), so that the stream surely
    holds entries it has not read: the relay must send those again."""
    needs_own(fault_servers, redis=True)
    both = tenants(fault_world)
    unread: list[int] = []

    def restart_with_unread_entries() -> float:
        fault_stack.pause("reporter")
        try:
            wait_until(
                lambda: unread_entries(fault_redis, STREAM, REPORTER_GROUP) > 0,
                10,
                "stream entries the reporter has not read",
            )
            unread.append(unread_entries(fault_redis, STREAM, REPORTER_GROUP))
            return restart_redis(fault_servers, down_s=1.0)
        finally:
            fault_stack.resume("reporter")

    outcome = batch_and_singles_with_a_fault(
        "2 redis restarted",
        fault_stack,
        fault_engine,
        fault_redis,
        both,
        restart_with_unread_entries,
    )
    print(f"faults[2 redis restarted] entries unread when it stopped: {unread[0]}")

    assert outcome.batch["accepted"] == BATCH_LEADS
    assert {reply.status for reply in outcome.replies} <= {200, 202} | REFUSED
    outcome.assert_kept(within_s=REPAIR_BOUND_S)
    # The queued messages came back: the chunks' through the sweeper, the singles' through
    # the sweeper or the backlog of the single tasks sent after the restart (whichever comes
    # first); the stream through the relay.
    assert outcome.swept_chunks > 0
    assert outcome.swept_singles + outcome.taken_from_backlog > 0
    [replay] = fault_stack.logged("relay", "relay.redis_data_lost")
    assert replay["replayed"] > 0


@pytest.mark.slow
def test_postgres_crashed_and_restarted_mid_batch(
    fault_servers, fault_stack, fault_engine, fault_redis, fault_world
):
    needs_own(fault_servers, postgres=True)
    both = tenants(fault_world)

    outcome = batch_and_singles_with_a_fault(
        "3 postgres restarted",
        fault_stack,
        fault_engine,
        fault_redis,
        both,
        lambda: restart_postgres(fault_servers, down_s=3.0),
    )

    assert outcome.batch["accepted"] == BATCH_LEADS
    assert {reply.status for reply in outcome.replies} <= {200, 202} | REFUSED
    outcome.assert_kept(within_s=REPAIR_BOUND_S)
