"""Scenario 1: kill -9 of both worker commands (each whole process group) mid-batch, then
a restart. Messages held unacknowledged by the killed processes come back only after the
broker's visibility timeout (600 s); the sweeper publishes those commands again."""

from __future__ import annotations

import time

import pytest

from tests.faults.scenario import (
    BATCH_LEADS,
    REPAIR_BOUND_S,
    batch_and_singles_with_a_fault,
    tenants,
)

WORKERS = ("worker", "campaign-worker")


@pytest.mark.slow
def test_workers_killed_mid_batch_then_restarted(
    fault_stack, fault_engine, fault_redis, fault_world
):
    both = tenants(fault_world)

    def kill_and_restart_workers() -> float:
        """The repair is the moment both new workers consume again (their start-up, a few
        seconds on a busy machine, is part of the outage)."""
        fault_stack.kill(*WORKERS)
        time.sleep(1)
        fault_stack.start(*WORKERS)
        return time.time()

    outcome = batch_and_singles_with_a_fault(
        "1 workers killed", fault_stack, fault_engine, fault_redis, both, kill_and_restart_workers
    )

    assert outcome.batch["accepted"] == BATCH_LEADS
    assert {reply.status for reply in outcome.replies} <= {200, 202}
    outcome.assert_kept(within_s=REPAIR_BOUND_S)
    # The chunks the killed processes held came back through the sweeper. (Single tasks
    # take a few ms: the two killed with the worker may have committed already.)
    assert outcome.swept_chunks > 0
