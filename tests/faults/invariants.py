"""SPEC 5's invariants, counted after a fault from the database, the stream and the stats.

``count`` prints one line per number (``pytest -s`` shows them; so does a failure report),
and ``Counts.assert_kept`` asserts every one that must be zero.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from uuid import UUID

from redis import Redis
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError

from tests.faults.harness import StreamWatch
from worker.store.tables import commands

CREATED_OR_REUSED = ("leadscout.conversation.created", "leadscout.conversation.reused")
REJECTED = ("leadscout.initiation.rejected",)
STATS_CATCH_UP_S = 30


@dataclass(frozen=True)
class Counts:
    accepted: int
    terminal: int
    # Accepted (answered 200/202, or a durable row) but not succeeded/failed: must be 0.
    lost: int
    # (channel, contact) pairs with more than one active conversation: 0.
    doubled_active_conversations: int
    succeeded_without_one_initiation_event: int
    failed_without_one_rejection_event: int
    # Nothing done twice: each succeeded command wrote exactly one template message.
    succeeded_without_one_template_message: int
    outbox_events_never_on_stream: int
    # Requests answered 503 ("nothing was accepted, retry") whose command was recorded
    # anyway (counted by contact, for workloads with one request per contact): 0.
    refused_yet_recorded: int
    # (campaign, outcome, detail) buckets where the reporter's stats and the commands differ.
    campaign_stats_mismatches: int
    # From the end of the fault to the last command's completion (None: no fault).
    repair_to_last_terminal_s: float | None

    def lines(self, label: str) -> list[str]:
        return [f"faults[{label}] {name}: {value}" for name, value in asdict(self).items()]

    def assert_kept(self, within_s: float | None = None) -> None:
        zeros = {
            name: value
            for name, value in asdict(self).items()
            if name not in ("accepted", "terminal", "repair_to_last_terminal_s") and value != 0
        }
        assert zeros == {}, f"invariants broken: {zeros}"
        assert self.terminal == self.accepted > 0
        if within_s is not None:
            assert self.repair_to_last_terminal_s is not None
            assert self.repair_to_last_terminal_s < within_s, (
                f"the last command finished {self.repair_to_last_terminal_s:.1f}s after the"
                f" repair (limit {within_s}s)"
            )


def count(
    engine: Engine,
    redis: Redis,
    stream: str,
    workspace_id: UUID,
    campaign_id: str | Sequence[str],
    *,
    label: str,
    watch: StreamWatch | None = None,
    client_accepted: Collection[UUID] = (),
    refused_contacts: Collection[UUID] = (),
    repaired_at: float | None = None,
) -> Counts:
    """Counts the workspace's invariants (the stats for each of its ``campaign_id``s) and
    prints them. ``client_accepted``: command ids the clients were answered 200/202 for;
    ``refused_contacts``: the contacts of requests answered 503;
    ``watch``: what the stream carried over time (else only what it holds now);
    ``repaired_at``: the wall-clock time the fault ended."""
    campaigns = [campaign_id] if isinstance(campaign_id, str) else list(campaign_id)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(
                text("SELECT id, status FROM commands WHERE workspace_id = :w"), {"w": workspace_id}
            ).all()
        )
        last_completed = conn.execute(
            text(
                "SELECT extract(epoch FROM max(completed_at)) FROM commands WHERE workspace_id = :w"
            ),
            {"w": workspace_id},
        ).scalar_one()
        outbox_ids = set(
            conn.execute(
                text("SELECT event_id FROM outbox WHERE workspace_id = :w"), {"w": workspace_id}
            ).scalars()
        )
        checks = _database_checks(conn, workspace_id)
        recorded_contacts = {
            UUID(contact)
            for contact in conn.execute(
                text(
                    "SELECT payload->'request'->>'contactId' FROM commands WHERE workspace_id = :w"
                ),
                {"w": workspace_id},
            ).scalars()
        }
    accepted = set(statuses) | set(client_accepted)
    terminal = {i for i, status in statuses.items() if status in ("succeeded", "failed")}
    on_stream = set(watch.event_ids) if watch else set()
    on_stream |= _stream_ids(redis, stream)
    counts = Counts(
        accepted=len(accepted),
        terminal=len(terminal),
        lost=len(accepted - terminal),
        **checks,
        outbox_events_never_on_stream=len(outbox_ids - on_stream),
        refused_yet_recorded=len(set(refused_contacts) & recorded_contacts),
        campaign_stats_mismatches=_stats_mismatches(engine, workspace_id, campaigns),
        repair_to_last_terminal_s=(
            round(float(last_completed) - repaired_at, 2)
            if repaired_at is not None and last_completed is not None
            else None
        ),
    )
    print("\n" + "\n".join(counts.lines(label)), flush=True)
    return counts


def _database_checks(conn, workspace_id: UUID) -> dict[str, int]:
    def scalar(sql: str, **params: object) -> int:
        return int(conn.execute(text(sql), {"w": workspace_id, **params}).scalar_one())

    events_per_command = """
        SELECT count(*) FROM commands c WHERE c.workspace_id = :w AND c.status = :status
        AND (SELECT count(*) FROM outbox o
             WHERE o.command_id = c.id AND o.event_type = ANY(:types)) <> 1"""
    return {
        "doubled_active_conversations": scalar(
            """SELECT count(*) FROM (SELECT 1 FROM conversations
               WHERE workspace_id = :w AND status = 'active'
               GROUP BY channel_id, contact_id HAVING count(*) > 1) doubled"""
        ),
        "succeeded_without_one_initiation_event": scalar(
            events_per_command, status="succeeded", types=list(CREATED_OR_REUSED)
        ),
        "failed_without_one_rejection_event": scalar(
            events_per_command, status="failed", types=list(REJECTED)
        ),
        "succeeded_without_one_template_message": scalar(
            """SELECT count(*) FROM commands c WHERE c.workspace_id = :w
               AND c.status = 'succeeded'
               AND (SELECT count(*) FROM messages m WHERE m.command_id = c.id) <> 1"""
        ),
    }


def _stream_ids(redis: Redis, stream: str) -> set[UUID]:
    return {UUID(json.loads(fields[b"event"])["id"]) for _, fields in redis.xrange(stream)}


Bucket = tuple[str, str, str]  # (campaign, outcome, detail)


def _stats_mismatches(engine: Engine, workspace_id: UUID, campaigns: list[str]) -> int:
    """Waits (up to STATS_CATCH_UP_S) until the reporter counted as many outcomes as the
    commands hold, then counts the buckets that differ."""
    deadline = time.monotonic() + STATS_CATCH_UP_S
    while True:
        expected, counted = (
            _outcomes(engine, workspace_id, campaigns),
            _stats(engine, workspace_id, campaigns),
        )
        if expected == counted or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    return sum(expected[key] != counted[key] for key in set(expected) | set(counted))


def _outcomes(engine: Engine, workspace_id: UUID, campaigns: list[str]) -> Counter[Bucket]:
    """What the stats must say, from the finished commands."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """SELECT payload->'request'->>'campaignId' AS campaign,
                   CASE WHEN status = 'failed' THEN 'rejected'
                        WHEN (result->>'alreadyInitiated')::boolean THEN 'reused'
                        ELSE 'created' END AS outcome,
                   CASE WHEN status = 'failed' THEN error_code
                        ELSE result->'conversation'->>'channelId' END AS detail,
                   count(*) AS n
                FROM commands
                WHERE workspace_id = :w AND status IN ('succeeded', 'failed')
                  AND payload->'request'->>'campaignId' = ANY(:campaigns)
                GROUP BY 1, 2, 3"""
            ),
            {"w": workspace_id, "campaigns": campaigns},
        )
        return Counter({(r.campaign, r.outcome, r.detail): r.n for r in rows})


def _stats(engine: Engine, workspace_id: UUID, campaigns: list[str]) -> Counter[Bucket]:
    """What the reporter counted from the events."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                """SELECT campaign_id, outcome, detail, n FROM campaign_stats
                   WHERE workspace_id = :w AND campaign_id = ANY(:campaigns)"""
            ),
            {"w": workspace_id, "campaigns": campaigns},
        )
        return Counter({(r.campaign_id, r.outcome, r.detail): r.n for r in rows})


def wait_all_terminal(
    engine: Engine, workspace_id: UUID, deadline_s: float, poll_s: float = 0.2
) -> float:
    """Polls until no command of the workspace is unfinished or ``deadline_s`` passed
    (a database that is still coming back counts as unfinished); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < deadline_s:
        try:
            with engine.connect() as conn:
                unfinished = conn.execute(
                    select(func.count()).where(
                        commands.c.workspace_id == workspace_id,
                        commands.c.status.in_(("accepted", "processing")),
                    )
                ).scalar_one()
            if unfinished == 0:
                break
        except OperationalError:
            pass
        time.sleep(poll_s)
    return time.monotonic() - started
