"""Stream and dedupe-table retention against real Redis and PostgreSQL (worker/retention.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from sqlalchemy import Engine, insert, select

from worker import retention
from worker.reporter import GROUP, LINGER_S, Reporter, _loop
from worker.retention import Retention, prune_counted, redis_now_ms, stream_gauges, trim_stream
from worker.store.tables import campaign_events_counted

STREAM = "test:retention"
HOUR_S = 3600.0


def add_old(redis: Redis, n: int, age_s: float) -> list[bytes]:
    """``n`` entries whose ids say they were added ``age_s`` ago (oldest first)."""
    start_ms = redis_now_ms(redis) - int(age_s * 1000)
    return [redis.xadd(STREAM, {"n": i}, id=f"{start_ms}-{i + 1}") for i in range(n)]


def add_new(redis: Redis, n: int) -> list[bytes]:
    return [redis.xadd(STREAM, {"n": i}) for i in range(n)]


def ids(redis: Redis) -> list[bytes]:
    return [entry_id for entry_id, _ in redis.xrange(STREAM)]


def deliver(redis: Redis, group: str, count: int) -> list[bytes]:
    """The group reads ``count`` entries (pending until acknowledged)."""
    reply = redis.xreadgroup(group, "c1", {STREAM: ">"}, count=count)
    return [entry_id for _, entries in reply for entry_id, _ in entries]


class TestTrimStream:
    """MINID is the lower of the age floor and the first entry any group still owes."""

    def test_without_a_group_entries_older_than_the_age_go(self, redis: Redis):
        old = add_old(redis, 3, age_s=2 * HOUR_S)
        new = add_new(redis, 2)

        removed = trim_stream(redis, STREAM, max_age_s=HOUR_S)

        assert (removed, ids(redis)) == (len(old), new)

    def test_old_entries_a_group_has_not_acknowledged_stay(self, redis: Redis):
        old = add_old(redis, 3, age_s=2 * HOUR_S)
        new = add_new(redis, 2)
        redis.xgroup_create(STREAM, GROUP, id="0")
        deliver(redis, GROUP, 5)

        removed = trim_stream(redis, STREAM, max_age_s=HOUR_S)

        assert (removed, ids(redis)) == (0, old + new)

    def test_old_entries_never_delivered_to_a_group_stay(self, redis: Redis):
        old = add_old(redis, 3, age_s=2 * HOUR_S)
        redis.xgroup_create(STREAM, GROUP, id="0")

        removed = trim_stream(redis, STREAM, max_age_s=HOUR_S)

        assert (removed, ids(redis)) == (0, old)

    def test_acknowledged_old_entries_go_up_to_the_first_pending_one(self, redis: Redis):
        old = add_old(redis, 5, age_s=2 * HOUR_S)
        new = add_new(redis, 2)
        redis.xgroup_create(STREAM, GROUP, id="0")
        delivered = deliver(redis, GROUP, 7)
        redis.xack(STREAM, GROUP, *delivered[:3], *delivered[4:])  # old[3] stays pending

        removed = trim_stream(redis, STREAM, max_age_s=HOUR_S)

        assert (removed, ids(redis)) == (3, old[3:] + new)

    def test_acknowledged_old_entries_go_and_newer_ones_stay(self, redis: Redis):
        old = add_old(redis, 3, age_s=2 * HOUR_S)
        new = add_new(redis, 2)
        redis.xgroup_create(STREAM, GROUP, id="0")
        redis.xack(STREAM, GROUP, *deliver(redis, GROUP, 5))

        removed = trim_stream(redis, STREAM, max_age_s=HOUR_S)

        assert (removed, ids(redis)) == (len(old), new)

    def test_the_slowest_of_two_groups_decides(self, redis: Redis):
        old = add_old(redis, 4, age_s=2 * HOUR_S)
        redis.xgroup_create(STREAM, GROUP, id="0")
        redis.xgroup_create(STREAM, "slow", id="0")
        redis.xack(STREAM, GROUP, *deliver(redis, GROUP, 4))
        redis.xack(STREAM, "slow", *deliver(redis, "slow", 1))  # delivered and acked: old[0]

        removed = trim_stream(redis, STREAM, max_age_s=HOUR_S)

        assert (removed, ids(redis)) == (1, old[1:])

    def test_a_missing_stream_removes_nothing(self, redis: Redis):
        assert (trim_stream(redis, STREAM, max_age_s=HOUR_S), redis.exists(STREAM)) == (0, 0)


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"stream": STREAM})


class TestStreamGauges:
    """The stream's length and its oldest entry's age, by Redis's clock."""

    def test_length_and_oldest_age(self, redis: Redis):
        add_old(redis, 2, age_s=120)
        add_new(redis, 3)

        length, age = stream_gauges(redis, STREAM)

        assert length == 5
        assert 120 <= age < 125
        assert (gauge("leadscout_stream_length"), gauge("leadscout_stream_oldest_age_seconds")) == (
            5,
            age,
        )

    def test_an_empty_stream_is_zero_and_zero(self, redis: Redis):
        assert stream_gauges(redis, STREAM) == (0, 0.0)
        assert (gauge("leadscout_stream_length"), gauge("leadscout_stream_oldest_age_seconds")) == (
            0,
            0,
        )


def count_rows(engine: Engine, counted_at: list[datetime]) -> list:
    rows = [{"event_id": uuid4(), "counted_at": at} for at in counted_at]
    with engine.begin() as conn:
        conn.execute(insert(campaign_events_counted), rows)
    return [row["event_id"] for row in rows]


def remaining(engine: Engine) -> set:
    with engine.connect() as conn:
        return set(conn.execute(select(campaign_events_counted.c.event_id)).scalars())


class TestPruneCounted:
    """Dedupe rows go after the same age, never while the stream may still deliver theirs."""

    def test_rows_older_than_the_age_go(self, engine: Engine):
        now = datetime.now(UTC)
        old = count_rows(engine, [now - timedelta(hours=3)] * 3)
        new = count_rows(engine, [now - timedelta(minutes=30), now])

        assert prune_counted(engine, max_age_s=2 * HOUR_S) == len(old)
        assert remaining(engine) == set(new)

    def test_rows_counted_after_the_oldest_retained_entry_stay(self, engine: Engine):
        now = datetime.now(UTC)
        oldest_entry = now - timedelta(hours=10)
        margin = timedelta(seconds=retention.CLOCK_MARGIN_S)
        before = count_rows(engine, [oldest_entry - margin - timedelta(minutes=1)])
        kept = count_rows(engine, [oldest_entry - margin + timedelta(minutes=1), oldest_entry])

        assert prune_counted(engine, max_age_s=2 * HOUR_S, keep_after=oldest_entry) == 1
        assert remaining(engine) == set(kept)
        assert not set(before) & remaining(engine)

    def test_many_rows_go_in_batches(self, engine: Engine, monkeypatch: pytest.MonkeyPatch):
        monkeypatch.setattr(retention, "PRUNE_BATCH", 2)
        count_rows(engine, [datetime.now(UTC) - timedelta(days=8)] * 5)

        assert (prune_counted(engine, max_age_s=7 * 24 * HOUR_S), remaining(engine)) == (5, set())

    def test_one_run_deletes_at_most_its_batches(
        self, engine: Engine, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setattr(retention, "PRUNE_BATCH", 2)
        monkeypatch.setattr(retention, "PRUNE_MAX_BATCHES", 2)
        count_rows(engine, [datetime.now(UTC) - timedelta(days=8)] * 5)

        assert [prune_counted(engine, max_age_s=7 * 24 * HOUR_S) for _ in range(2)] == [4, 1]


class ThreeRounds:
    """A stop flag for the reporter's loop that stops it after three rounds."""

    def __init__(self) -> None:
        self.checks = 0

    @property
    def requested(self) -> bool:
        self.checks += 1
        return self.checks > 3

    def sleep(self, seconds: float) -> None:
        # The only wait a round that did not fail makes: after a short batch.
        if seconds != LINGER_S:
            raise AssertionError("the loop failed a round")


class TestReporterLoop:
    """The reporter applies the policy from its loop, at most once per interval."""

    def test_the_loop_trims_what_its_group_acknowledged(self, engine: Engine, redis: Redis):
        add_old(redis, 3, age_s=2 * HOUR_S)
        new = add_new(redis, 2)
        reporter = Reporter(engine, redis, STREAM, block_ms=10)
        reporter.ensure_group()
        policy = Retention(engine, redis, STREAM, max_age_s=HOUR_S, every_s=HOUR_S)

        _loop(reporter, ThreeRounds(), policy)  # round 1 counts and acks all; then trims

        assert ids(redis) == new
        assert gauge("leadscout_stream_length") == 2

    def test_it_runs_once_per_interval(self, engine: Engine, redis: Redis):
        policy = Retention(engine, redis, STREAM, max_age_s=HOUR_S, every_s=HOUR_S)

        assert [policy.run_if_due(), policy.run_if_due()] == [True, False]
