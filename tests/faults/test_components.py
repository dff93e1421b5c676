"""Scenarios 4, 5 and 6: a lock holder paused past its lock's TTL, the relay killed between
XADD and marking its rows, the reporter killed with entries pending and a second one
started beside its replacement. Each runs a 5,000-lead batch, then counts the invariants.

Scenarios 5 and 6 stop the component at an exact point with a table lock the test holds
(``components.TableLock``): the relay's ``UPDATE outbox_writes`` and the reporter's insert of
its counted event ids wait for it, after the XADD and the XREADGROUP already happened.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack

import httpx
import pytest
from sqlalchemy import text

from tests.faults.components import (
    TableLock,
    consumer_name,
    count_logged,
    entries_per_event,
    paused,
    pending_by_consumer,
    scalar,
    start_named,
    sum_logged,
    unpublished,
    wait_for,
    waiting_commands_locked,
    waiting_on_lock,
)
from tests.faults.conftest import SWEEP_AFTER_S
from tests.faults.harness import (
    STREAM,
    post_batch,
    terminal_count,
    volume_workspace,
    wait_progress,
)
from tests.faults.invariants import count, wait_all_terminal
from tests.faults.scenario import (
    BATCH_CAMPAIGN,
    BATCH_LEADS,
    LIMITS,
    OPTED_OUT,
    REPAIR_BOUND_S,
    WAIT_TERMINAL_S,
)
from worker.reporter import BATCH_SIZE, CLAIM_IDLE_MS, GROUP

# --- 4: a lock holder paused past the lock TTL ---------------------------------------------

LOCK_TTL_MS = 400
# Longer than the TTL many times over, and than the sweep delay: the sweeper publishes again
# the commands the paused worker marked processing (those its write holds locked excepted).
PAUSE_S = SWEEP_AFTER_S + 1
CAMPAIGN_WORKERS = ("campaign-worker", "campaign-worker-2")
# As soon as the first rejections commit (each chunk writes its own first), before any
# chunk's round: the 5,000 commands are three chunks (2,000, 2,000, 1,000), each worker holds
# at least one (each reserves at most one per pool process), and a round is a whole chunk,
# so a worker whose round committed may have nothing left to hold.
HOLDER_FAULT_AT = 1


@pytest.mark.slow
def test_lock_holder_paused_past_its_ttl(fault_stack, fault_engine, fault_redis, fault_world):
    """Two campaign workers on the same three channels. One is caught holding the channel
    locks with its fencing tokens issued, before its write checks them: it waits on the
    row locks the test holds on every waiting command, in its claim, the first statement
    under the channel locks (its draft, before them, only reads). It is SIGSTOPped
    there, the row locks released, and the other worker goes on with the
    batch: its locks expired, the other takes them and issues newer tokens. Resumed, the
    first finds its tokens stale (``initiation.lost_race`` ``stale_fence``), writes
    nothing and goes round again."""
    fault_stack.env["LEADSCOUT_LOCK_TTL_MS"] = str(LOCK_TTL_MS)
    fault_stack.add("campaign-worker-2", list(fault_stack.specs["campaign-worker"]))
    ws = volume_workspace(fault_world, BATCH_LEADS, LIMITS, opted_out=OPTED_OUT)
    start_named(fault_stack, *fault_stack.specs)

    post_batch(fault_stack, ws, BATCH_CAMPAIGN, ws.contacts)
    wait_progress(fault_engine, ws.workspace_id, HOLDER_FAULT_AT, BATCH_LEADS)
    with ExitStack() as fault:
        with waiting_commands_locked(fault_engine, ws.workspace_id):
            wait_for(
                lambda: waiting_on_lock(fault_engine, "campaign-worker", "SELECT %FOR UPDATE"),
                30,
                "campaign-worker waiting under its channel locks",
            )
            fault.enter_context(paused(fault_stack, "campaign-worker"))
        done = terminal_count(fault_engine, ws.workspace_id)
        time.sleep(PAUSE_S)
        while_paused = terminal_count(fault_engine, ws.workspace_id) - done
    repaired_at = time.time()
    wait_all_terminal(fault_engine, ws.workspace_id, WAIT_TERMINAL_S)

    counts = count(
        fault_engine,
        fault_redis,
        STREAM,
        ws.workspace_id,
        BATCH_CAMPAIGN,
        label="4 lock holder paused",
        repaired_at=repaired_at,
    )
    stale = {
        name: count_logged(fault_stack, (name,), "initiation.lost_race", reason="stale_fence")
        for name in CAMPAIGN_WORKERS
    }
    expired = count_logged(fault_stack, CAMPAIGN_WORKERS, "channel_lock.expired_before_release")
    swept = sum_logged(fault_stack, ("relay",), "sweeper.republished", "commands")
    print(
        f"faults[4 lock holder paused] finished by the other worker while paused:"
        f" {while_paused}, stale_fence rounds: {stale},"
        f" locks expired before release: {expired}, commands swept: {swept}"
    )
    counts.assert_kept(within_s=REPAIR_BOUND_S)
    assert counts.accepted == BATCH_LEADS
    # The other worker wrote, so it bumped the tokens the paused one holds.
    assert while_paused > 0
    assert stale["campaign-worker"] >= 1
    fault_stack.assert_alive()


# --- 5: the relay killed between XADD and marking its rows ---------------------------------


@pytest.mark.slow
def test_relay_killed_between_xadd_and_marking(fault_stack, fault_engine, fault_redis, fault_world):
    """The batch runs to completion; then its outbox writes are made unpublished again (what
    a worker killed between its commit and its fast path leaves), with the relay stopped.
    Under ``LOCK TABLE outbox_writes IN SHARE MODE`` a new relay claims the oldest writes
    (FOR UPDATE SKIP LOCKED is allowed) and XADDs their events, and its ``UPDATE ...
    published_at`` waits: it is killed right there. Once the lock is gone, a third relay
    sends every row again, those of the killed relay included: each is on the stream at
    least once, and the reporter drops the duplicates by event id."""
    ws = volume_workspace(fault_world, BATCH_LEADS, LIMITS, opted_out=OPTED_OUT)
    fault_stack.start()
    post_batch(fault_stack, ws, BATCH_CAMPAIGN, ws.contacts)
    wait_all_terminal(fault_engine, ws.workspace_id, WAIT_TERMINAL_S)
    wait_for(lambda: unpublished(fault_engine, ws.workspace_id) == 0, 30, "outbox published")
    before = entries_per_event(fault_redis, STREAM)
    reporter_duplicates_before = _reporter_duplicates(fault_stack)

    fault_stack.kill("relay")
    rows = _mark_unpublished(fault_engine, ws.workspace_id)
    with TableLock(fault_engine, "outbox_writes", "SHARE"):
        fault_stack.start("relay")
        wait_for(lambda: fault_redis.xlen(STREAM) > before.total(), 30, "the relay's XADD")
        time.sleep(0.3)  # it is blocked, not slow: nothing more comes
        first_sent = fault_redis.xlen(STREAM) - before.total()
        assert _last_entries(fault_redis, first_sent) == _oldest_writes(
            fault_engine, ws.workspace_id, first_sent
        )
        assert unpublished(fault_engine, ws.workspace_id) == rows
        fault_stack.kill("relay")
    fault_stack.start("relay")
    repaired_at = time.monotonic()
    wait_for(lambda: unpublished(fault_engine, ws.workspace_id) == 0, 30, "every row marked")
    republished_s = time.monotonic() - repaired_at

    after = entries_per_event(fault_redis, STREAM)
    sent_again = after - before
    outbox_ids = _outbox_event_ids(fault_engine, ws.workspace_id)
    counts = count(
        fault_engine,
        fault_redis,
        STREAM,
        ws.workspace_id,
        BATCH_CAMPAIGN,
        label="5 relay killed after XADD",
    )
    reporter_duplicates = _reporter_duplicates(fault_stack) - reporter_duplicates_before
    print(
        f"faults[5 relay killed after XADD] rows unpublished: {rows},"
        f" sent by the killed relay: {first_sent},"
        f" entries sent again: {sent_again.total()},"
        f" events on the stream more than twice: {sum(n > 2 for n in after.values())},"
        f" duplicates the reporter dropped: {reporter_duplicates},"
        f" restart to every row marked: {republished_s:.2f}s"
    )
    counts.assert_kept()
    assert counts.accepted == BATCH_LEADS == rows
    assert 0 < first_sent < rows
    assert min(after[event_id] for event_id in outbox_ids) >= 1
    # Every row once more, and those of the killed relay once more again.
    assert sent_again.total() == rows + first_sent
    assert sorted(sent_again.values()) == [1] * (rows - first_sent) + [2] * first_sent
    assert reporter_duplicates == rows + first_sent
    assert republished_s < SWEEP_AFTER_S + 10


def _mark_unpublished(engine, workspace_id) -> int:
    """Marks the workspace's writes unpublished; returns how many outbox rows they hold."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE outbox_writes SET published_at = NULL"
                " WHERE id IN (SELECT write_id FROM outbox WHERE workspace_id = :w)"
            ),
            {"w": workspace_id},
        )
    return unpublished(engine, workspace_id)


def _last_entries(redis, n: int) -> list[str]:
    """The event ids of the stream's last ``n`` entries, in stream order."""
    entries = redis.xrevrange(STREAM, count=n)
    return [json.loads(fields[b"event"])["id"] for _, fields in reversed(entries)]


def _oldest_writes(engine, workspace_id, n: int) -> list[str]:
    """The event ids of the workspace's first ``n`` outbox rows in write order, which must
    end at a write's end: a relay sends whole writes, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT event_id, write_id FROM outbox WHERE workspace_id = :w"
                " ORDER BY write_id, id"
            ),
            {"w": workspace_id},
        ).all()
    assert n == len(rows) or rows[n].write_id != rows[n - 1].write_id, "a write sent in part"
    return [str(row.event_id) for row in rows[:n]]


def _outbox_event_ids(engine, workspace_id):
    with engine.connect() as conn:
        return set(
            conn.execute(
                text("SELECT event_id FROM outbox WHERE workspace_id = :w"), {"w": workspace_id}
            ).scalars()
        )


def _reporter_duplicates(stack, names=("reporter",)) -> int:
    return sum_logged(stack, names, "reporter.batch_counted", "duplicate")


# --- 6: the reporter killed mid-stream, a second one beside its replacement ----------------

REPORTERS = ("reporter", "reporter-2")
# Early: the backlog of three batches must build up while the reporter is held.
REPORTER_FAULT_AT = 1_000


@pytest.mark.slow
def test_reporter_killed_mid_stream_then_two(fault_stack, fault_engine, fault_redis, fault_world):
    """The reporter reads a full batch of entries and is killed before it counts them: it
    is held at its insert of their event ids by ``LOCK TABLE campaign_events_counted IN
    SHARE MODE`` while a backlog builds, let through once (its next read takes a full
    batch of the backlog), and killed at the next insert. Those entries stay pending on a
    dead consumer. A restarted reporter (a new consumer name) and a second one beside it,
    both held at their first count until each has read a batch, share the rest of the
    stream, and one of them claims the dead consumer's entries with XAUTOCLAIM once idle
    for CLAIM_IDLE_MS. The stats end exactly equal to the database's
    counts, in the stats table and through the API."""
    fault_stack.add("reporter-2", ["reporter"])
    ws = volume_workspace(fault_world, BATCH_LEADS, LIMITS, opted_out=OPTED_OUT)
    start_named(fault_stack, *(name for name in fault_stack.specs if name != "reporter-2"))
    post_batch(fault_stack, ws, BATCH_CAMPAIGN, ws.contacts)
    wait_progress(fault_engine, ws.workspace_id, REPORTER_FAULT_AT, BATCH_LEADS)

    dead = consumer_name(fault_stack, "reporter")
    with TableLock(fault_engine, "campaign_events_counted", "SHARE") as lock:
        wait_for(lambda: _held(fault_engine), 30, "the reporter held at its count")
        wait_for(
            lambda: _undelivered(fault_redis) >= 3 * BATCH_SIZE, 60, "a backlog of three batches"
        )
        lock.let_one_through()
        # Held again, not only a full batch pending: a full batch let through is pending too
        # between its commit and its XACK, and killing it there would leave counted entries.
        wait_for(
            lambda: _held(fault_engine) and _pending(fault_redis, dead) == BATCH_SIZE,
            30,
            "a full batch read and held at its count",
        )
        fault_stack.kill("reporter")
        left_pending = _pending(fault_redis, dead)
        start_named(fault_stack, *REPORTERS)
        repaired_at = time.time()
        # Both held at their first count, a batch each: the first one up cannot take the
        # whole backlog before the second reads (the batch may have finished by now).
        wait_for(lambda: _holding(fault_redis) == 2, 30, "both new reporters held at their count")
    wait_all_terminal(fault_engine, ws.workspace_id, WAIT_TERMINAL_S)
    claimed_s = wait_for(
        lambda: _group_pending(fault_redis) == 0,
        CLAIM_IDLE_MS / 1000 + 30,
        "the group's pending entries acknowledged",
    )

    counts = count(
        fault_engine,
        fault_redis,
        STREAM,
        ws.workspace_id,
        BATCH_CAMPAIGN,
        label="6 reporter killed, two reporters",
        repaired_at=repaired_at,
    )
    claimed = sum_logged(fault_stack, REPORTERS, "reporter.claimed", "count")
    counted = {
        name: sum_logged(fault_stack, (name,), "reporter.batch_counted", "counted")
        for name in REPORTERS
    }
    print(
        f"faults[6 reporter killed, two reporters] left pending by the dead consumer:"
        f" {left_pending}, claimed by the new ones: {claimed},"
        f" events counted per reporter (the first's lifetimes together): {counted},"
        f" all acknowledged {claimed_s:.1f}s after the batch finished"
    )
    counts.assert_kept(within_s=REPAIR_BOUND_S)
    assert counts.accepted == BATCH_LEADS
    assert left_pending == BATCH_SIZE
    assert claimed == left_pending
    assert _pending(fault_redis, dead) == 0
    assert counted["reporter-2"] > 0  # the second reporter shared the work
    assert sum(counted.values()) == BATCH_LEADS  # each event counted once, by one of them
    assert _api_stats(fault_stack, ws) == _expected_stats(fault_engine, ws.workspace_id)


def _held(engine) -> bool:
    """Whether the reporter waits on the test's lock at its insert of counted event ids."""
    return waiting_on_lock(engine, "reporter", "INSERT INTO campaign_events_counted%")


def _pending(redis, consumer: str) -> int:
    return pending_by_consumer(redis, STREAM, GROUP).get(consumer, 0)


def _holding(redis) -> int:
    """Consumers with entries pending, the dead one's aside."""
    return sum(1 for n in pending_by_consumer(redis, STREAM, GROUP).values() if n > 0) - 1


def _undelivered(redis) -> int:
    """Entries after the group's last delivered one (Redis 6.2 has no group ``lag``)."""
    group = next(g for g in redis.xinfo_groups(STREAM) if g["name"] == GROUP.encode())
    after = b"(" + group["last-delivered-id"]
    return len(redis.xrange(STREAM, min=after, count=4 * BATCH_SIZE))


def _group_pending(redis) -> int:
    return int(redis.xpending(STREAM, GROUP)["pending"])


def _api_stats(stack, ws) -> dict[str, object]:
    answer = httpx.get(
        f"{stack.base_url}{ws.base}/campaigns/{BATCH_CAMPAIGN}/stats", headers=ws.headers
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return {"created": body["created"], "reused": body["reused"], "rejected": body["rejected"]}


def _expected_stats(engine, workspace_id) -> dict[str, object]:
    def of(sql: str) -> int:
        return scalar(engine, sql, w=workspace_id)

    with engine.connect() as conn:
        rejected = dict(
            conn.execute(
                text(
                    "SELECT error_code, count(*) FROM commands"
                    " WHERE workspace_id = :w AND status = 'failed' GROUP BY error_code"
                ),
                {"w": workspace_id},
            ).all()
        )
    return {
        "created": of(
            "SELECT count(*) FROM commands WHERE workspace_id = :w AND status = 'succeeded'"
            " AND NOT (result->>'alreadyInitiated')::boolean"
        ),
        "reused": of(
            "SELECT count(*) FROM commands WHERE workspace_id = :w AND status = 'succeeded'"
            " AND (result->>'alreadyInitiated')::boolean"
        ),
        "rejected": rejected,
    }
