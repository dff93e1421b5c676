"""What the server and process scenarios share: a 5,000-lead batch and 300 single
initiations in flight, a fault in the middle, then the counts.

The batch and the single initiations belong to two workspaces (tenants), as on a shared
deployment: a campaign round locks every channel of its workspace, so single initiations
on the same channels would mostly measure that wait, not the recovery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from redis import Redis
from sqlalchemy import Engine

from tests.faults.components import paused
from tests.faults.conftest import SWEEP_AFTER_S
from tests.faults.harness import (
    STREAM,
    FaultStack,
    Reply,
    StreamWatch,
    VolumeWorkspace,
    accepted_ids,
    fire_singles,
    post_batch,
    request_body,
    volume_workspace,
    wait_progress,
)
from tests.faults.invariants import Counts, count, wait_all_terminal
from tests.world import World

BATCH_LEADS = 5_000
SINGLES = 300
OPTED_OUT = 100
# Three channels holding 6,000 fresh conversations: every reachable lead gets one (each
# workspace has its own three).
LIMITS = (2_000, 2_000, 2_000)
BATCH_CAMPAIGN, SINGLES_CAMPAIGN = "faults-batch", "faults-singles"
# The first 200 singles start once SINGLES_START of the batch's commands finished; the
# fault strikes once SINGLES_DONE_AT of them finished, as the last 100 arrive, the campaign
# worker paused in between (so the batch is still running then).
SINGLES_START = 500
SINGLES_FIRST = 200
SINGLES_DONE_AT = 20
# SPEC 5.2 as measured here: every command finished within sweep-after + 10 s of the repair.
REPAIR_BOUND_S = SWEEP_AFTER_S + 10
WAIT_TERMINAL_S = SWEEP_AFTER_S + 60


@dataclass
class Outcome:
    batch_counts: Counts
    singles_counts: Counts
    replies: list[Reply]
    batch: dict[str, object]
    # What the relay's sweeper published again: commands, chunk tasks, single tasks.
    swept: int
    swept_chunks: int
    swept_singles: int
    # Single commands that later single tasks took along from the queue's backlog.
    taken_from_backlog: int

    def assert_kept(self, within_s: float) -> None:
        self.batch_counts.assert_kept(within_s)
        self.singles_counts.assert_kept(within_s)


@dataclass
class Tenants:
    campaign: VolumeWorkspace  # 5,000 leads (the first 100 opted out) for one batch
    singles: VolumeWorkspace  # 300 leads, one single initiation each


def tenants(world: World) -> Tenants:
    other = World(world.engine, world.redis, name="Faults singles")
    return Tenants(
        volume_workspace(world, BATCH_LEADS, LIMITS, opted_out=OPTED_OUT),
        volume_workspace(other, SINGLES, LIMITS),
    )


def single_bodies(ws: VolumeWorkspace) -> list[dict[str, object]]:
    """One per lead, naming the three channels in turn (so two worker processes can write
    at once: one lock per channel), async and sync alternately (see ``fire_singles``)."""
    return [
        request_body(ws, lead, SINGLES_CAMPAIGN, providerChannelId=str(ws.channels[i % 3]))
        for i, lead in enumerate(ws.contacts)
    ]


def refused_contacts(ws: VolumeWorkspace, replies: Sequence[Reply]) -> set[UUID]:
    """The leads whose request was answered 503 (the bodies go one per lead, in order)."""
    return {lead for lead, reply in zip(ws.contacts, replies, strict=True) if reply.status == 503}


def batch_and_singles_with_a_fault(
    label: str,
    stack: FaultStack,
    engine: Engine,
    redis: Redis,
    tenants: Tenants,
    fault: Callable[[], float],
) -> Outcome:
    """Starts the stack and posts the batch. Once SINGLES_START of its commands finished,
    pauses the campaign worker and sends 200 singles; once SINGLES_DONE_AT of those
    finished (the others published and mostly queued), resumes it, sends the last 100 and
    runs ``fault`` (which returns the wall-clock time of its repair) as they arrive, the
    batch still mid-way. Then waits for every command and counts, per tenant."""
    stack.start()
    with StreamWatch(stack.servers.redis_url) as watch:
        campaign, ws = tenants.campaign, tenants.singles
        batch = post_batch(stack, campaign, BATCH_CAMPAIGN, campaign.contacts)
        wait_progress(engine, campaign.workspace_id, SINGLES_START, BATCH_LEADS)
        bodies = single_bodies(ws)
        # The batch waits mid-way while the singles warm up: a chunk path faster than
        # their first SINGLES_DONE_AT once finished all 5,000 before the fault.
        with paused(stack, "campaign-worker"):
            first = fire_singles(stack, ws, bodies[:SINGLES_FIRST])
            wait_progress(engine, ws.workspace_id, SINGLES_DONE_AT, SINGLES_FIRST)
        wait_progress(engine, campaign.workspace_id, SINGLES_START, BATCH_LEADS)  # not all
        second = fire_singles(stack, ws, bodies[SINGLES_FIRST:])
        repaired_at = fault()
        replies = first.join() + second.join()
        for workspace in (campaign, ws):
            wait_all_terminal(engine, workspace.workspace_id, WAIT_TERMINAL_S)
        watch.settle()
        counts = [
            count(
                engine,
                redis,
                STREAM,
                workspace.workspace_id,
                campaign_id,
                label=f"{label}, {tenant}",
                watch=watch,
                client_accepted=accepted,
                refused_contacts=refused,
                repaired_at=repaired_at,
            )
            for tenant, workspace, campaign_id, accepted, refused in (
                ("batch", campaign, BATCH_CAMPAIGN, (), ()),
                (
                    "singles",
                    ws,
                    SINGLES_CAMPAIGN,
                    accepted_ids(replies),
                    refused_contacts(ws, replies),
                ),
            )
        ]
    stack.assert_alive()
    sweeps = stack.logged("relay", "sweeper.republished")
    swept = [sum(record[field] for record in sweeps) for field in ("commands", "chunks", "singles")]
    print(f"faults[{label}] swept (commands, chunk tasks, single tasks): {swept}", flush=True)
    taken = sum(r["commands"] for r in stack.logged("worker", "initiation.backlog_taken"))
    print(f"faults[{label}] single commands taken from the backlog: {taken}", flush=True)
    return Outcome(counts[0], counts[1], replies, batch, *swept, taken_from_backlog=taken)
