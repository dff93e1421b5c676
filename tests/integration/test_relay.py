"""The outbox relay and ``events tail`` against real PostgreSQL and Redis (SPEC 6, invariant 4)."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from sqlalchemy import Engine, event, select

from core import jsontext
from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from tests.processes import running, service_env, wait_until
from tests.world import World, body
from worker.events import rejection_event
from worker.relay import publish_now, relay_batch
from worker.store import outbox as outbox_store
from worker.store.outbox import Written
from worker.store.tables import outbox, outbox_writes

STREAM = "leadscout:events"


def stream_events(redis: Redis) -> list[dict[str, Any]]:
    """The stream's entries, each checked to carry the single field ``event``."""
    entries = redis.xrange(STREAM)
    assert all(set(fields) == {b"event"} for _, fields in entries)
    return [json.loads(fields[b"event"]) for _, fields in entries]


def outbox_rows(engine: Engine) -> list[Any]:
    """The outbox rows in order, each with its write and whether that was published."""
    with engine.connect() as conn:
        query = select(
            outbox.c.event_id,
            outbox.c.event_type,
            outbox.c.workspace_id,
            outbox.c.payload,
            outbox.c.write_id,
            outbox_writes.c.published_at,
        ).join_from(outbox, outbox_writes)
        return list(conn.execute(query.order_by(outbox.c.id)))


def writes_of(*rows: Any) -> dict[int, list[Written]]:
    """Outbox rows by write, as the worker's fast path holds them after its writes."""
    writes: dict[int, list[Written]] = {}
    for row in rows:
        event = Written(
            row.event_id, row.event_type, row.workspace_id, jsontext.dumps_bytes(row.payload)
        )
        writes.setdefault(row.write_id, []).append(event)
    return writes


def unpublished(engine: Engine) -> int:
    return sum(row.published_at is None for row in outbox_rows(engine))


def initiate(world: World, count: int, **extra: Any) -> None:
    """``count`` created conversations, one per new contact, each writing one outbox row."""
    template = world.template()
    for n in range(count):
        contact = world.contact(phone=f"+52155{n:08d}")
        assert world.initiate(**body(contact, template, **extra)).status == "succeeded"


def insert_rejections(engine: Engine, workspace_id: UUID, count: int, per_write: int = 1) -> None:
    """Outbox rows written directly, ``per_write`` to a write, all in one transaction."""
    with engine.begin() as conn:
        for _ in range(count):
            events = []
            for _ in range(per_write):
                command = InitiateOutbound.model_validate(
                    {
                        "commandId": str(uuid4()),
                        "workspaceId": str(workspace_id),
                        "request": body(uuid4(), uuid4()),
                    }
                )
                event = rejection_event(command, ErrorCode.CONTACT_NOT_FOUND)
                events.append((event, command.command_id))
            outbox_store.add_many(conn, events)


@pytest.fixture
def world(engine, redis) -> World:
    world = World(engine, redis)
    world.channel(world.agent())
    return world


class TestRelayBatch:
    """One relay sends every committed outbox row to the stream once, in outbox order."""

    def test_initiation_events_reach_the_stream_once_in_outbox_order(self, world, engine, redis):
        initiate(world, 5)
        assert relay_batch(engine, redis, STREAM) == 5
        rows = outbox_rows(engine)
        assert stream_events(redis) == [row.payload for row in rows]
        assert [e["id"] for e in stream_events(redis)] == [str(row.event_id) for row in rows]
        assert unpublished(engine) == 0

    def test_a_second_batch_sends_nothing_new(self, world, engine, redis):
        initiate(world, 3)
        relay_batch(engine, redis, STREAM)
        assert relay_batch(engine, redis, STREAM) == 0
        assert redis.xlen(STREAM) == 3

    def test_the_limit_caps_a_batch_and_the_next_batch_takes_the_rest(self, world, engine, redis):
        insert_rejections(engine, world.workspace_id, 7)
        assert relay_batch(engine, redis, STREAM, limit=5) == 5
        assert relay_batch(engine, redis, STREAM, limit=5) == 2
        assert [e["id"] for e in stream_events(redis)] == [
            str(row.event_id) for row in outbox_rows(engine)
        ]

    def test_a_write_goes_out_whole_and_the_limit_counts_whole_writes(self, world, engine, redis):
        insert_rejections(engine, world.workspace_id, 3, per_write=3)
        assert relay_batch(engine, redis, STREAM, limit=5) == 3  # 3 + 3 would pass 5
        assert relay_batch(engine, redis, STREAM, limit=6) == 6
        assert relay_batch(engine, redis, STREAM, limit=6) == 0
        assert [e["id"] for e in stream_events(redis)] == [
            str(row.event_id) for row in outbox_rows(engine)
        ]

    def test_a_write_larger_than_the_limit_goes_out_whole(self, world, engine, redis):
        insert_rejections(engine, world.workspace_id, 2, per_write=4)
        assert relay_batch(engine, redis, STREAM, limit=2) == 4
        assert unpublished(engine) == 4
        assert relay_batch(engine, redis, STREAM, limit=2) == 4
        assert unpublished(engine) == 0

    def test_the_event_field_is_compact_json(self, world, engine, redis):
        initiate(world, 1)
        relay_batch(engine, redis, STREAM)
        [(_, fields)] = redis.xrange(STREAM)
        assert b'":' in fields[b"event"]
        assert b'": ' not in fields[b"event"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class TestRelayMetrics:
    """Each batch counts the events it sent and observes the outbox lag once."""

    def test_a_batch_of_four_adds_four_events_and_one_lag_sample(self, world, engine, redis):
        initiate(world, 4)
        relayed = sample("leadscout_events_relayed_total", path="sweep")
        lags = sample("leadscout_outbox_lag_seconds_count")
        relay_batch(engine, redis, STREAM)
        assert sample("leadscout_events_relayed_total", path="sweep") == relayed + 4
        assert sample("leadscout_outbox_lag_seconds_count") == lags + 1

    def test_publish_now_counts_as_the_direct_path(self, world, engine, redis):
        initiate(world, 1)
        [row] = outbox_rows(engine)
        direct = sample("leadscout_events_relayed_total", path="direct")
        publish_now(engine, redis, STREAM, writes_of(row))
        assert sample("leadscout_events_relayed_total", path="direct") == direct + 1


class TestConcurrentRelays:
    """Four relays sweeping one outbox at once send every row exactly once."""

    def test_300_rows_reach_the_stream_exactly_once(self, world, engine, redis):
        insert_rejections(engine, world.workspace_id, 300)
        sent, errors = run_relays(engine, redis, relays=4, limit=20)
        assert errors == []
        assert sum(sent) == 300
        ids = Counter(e["id"] for e in stream_events(redis))
        assert ids == Counter({str(row.event_id): 1 for row in outbox_rows(engine)})
        assert unpublished(engine) == 0


def run_relays(
    engine: Engine, redis: Redis, relays: int, limit: int
) -> tuple[list[int], list[Exception]]:
    """Runs ``relays`` threads, released together, each sweeping until it finds nothing."""
    barrier = threading.Barrier(relays)
    sent = [0] * relays
    errors: list[Exception] = []

    def sweep(index: int) -> None:
        barrier.wait()
        try:
            while count := relay_batch(engine, redis, STREAM, limit=limit):
                sent[index] += count
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(relays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sent, errors


class TestPublishNow:
    """The worker's fast path sends only the events it wrote, from memory; the relay sweeps
    the rest."""

    def test_sends_only_the_named_event_and_the_relay_sweeps_the_others(self, world, engine, redis):
        initiate(world, 3)
        rows = outbox_rows(engine)
        first, second, third = (row.event_id for row in rows)
        assert publish_now(engine, redis, STREAM, writes_of(rows[1])) == 1
        assert [e["id"] for e in stream_events(redis)] == [str(second)]
        assert relay_batch(engine, redis, STREAM) == 2
        assert [e["id"] for e in stream_events(redis)] == [str(second), str(first), str(third)]

    def test_an_already_published_event_is_not_sent_again(self, world, engine, redis):
        initiate(world, 1)
        [row] = outbox_rows(engine)
        publish_now(engine, redis, STREAM, writes_of(row))
        assert publish_now(engine, redis, STREAM, writes_of(row)) == 0
        assert redis.xlen(STREAM) == 1

    def test_no_events_send_nothing(self, world, engine, redis):
        initiate(world, 1)
        assert publish_now(engine, redis, STREAM, {}) == 0
        assert redis.exists(STREAM) == 0
        assert unpublished(engine) == 1


class SimulatedCrash(Exception):
    """The relay died between its XADD and its commit."""


@contextmanager
def failing_commits(engine: Engine) -> Iterator[None]:
    def crash(conn: Any) -> None:
        raise SimulatedCrash

    event.listen(engine, "commit", crash)
    try:
        yield
    finally:
        event.remove(engine, "commit", crash)


class TestAtLeastOnce:
    """A relay that fails after XADD but before its commit leaves the row to be sent again."""

    def test_the_row_stays_unpublished_and_the_next_batch_resends_it(self, world, engine, redis):
        initiate(world, 1)
        with failing_commits(engine), pytest.raises(SimulatedCrash):
            relay_batch(engine, redis, STREAM)
        assert redis.xlen(STREAM) == 1
        assert unpublished(engine) == 1
        assert relay_batch(engine, redis, STREAM) == 1
        [row] = outbox_rows(engine)
        assert [e["id"] for e in stream_events(redis)] == [str(row.event_id)] * 2
        assert {e["id"] for e in stream_events(redis)} == {str(row.event_id)}
        assert row.published_at is not None


def log_events(log: Path) -> list[str]:
    """The structlog event names a process wrote, in order."""
    lines = log.read_text().splitlines()
    return [json.loads(line)["event"] for line in lines if line.startswith("{")]


@contextmanager
def relay_process(database_url: str, redis_url: str, log: Path) -> Iterator[Any]:
    with running(["relay"], service_env(database_url, redis_url), log) as process:
        wait_until(lambda: "relay.started" in log_events(log), 30, "the relay to start")
        yield process


class TestRelayProcess:
    """``leadscout relay`` moves new rows, rides out Redis errors and stops on SIGTERM."""

    def test_moves_rows_written_after_it_started_then_stops_cleanly_on_sigterm(
        self, world, engine, redis, database_url, redis_url, tmp_path
    ):
        log = tmp_path / "relay.log"
        with relay_process(database_url, redis_url, log) as process:
            initiate(world, 3)
            # The relay marks rows published only after its XADD: wait for the mark.
            wait_until(lambda: unpublished(engine) == 0, 10, "3 rows marked published")
            assert redis.xlen(STREAM) == 3
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
            assert time.monotonic() - started < 3
        assert [e["id"] for e in stream_events(redis)] == [
            str(row.event_id) for row in outbox_rows(engine)
        ]
        assert log_events(log)[-1] == "relay.stopped"

    def test_keeps_running_through_redis_errors_and_sends_once_redis_accepts(
        self, world, engine, redis, database_url, redis_url, tmp_path
    ):
        log = tmp_path / "relay.log"
        with relay_process(database_url, redis_url, log) as process:
            redis.set(STREAM, "not a stream")
            initiate(world, 2)
            wait_until(lambda: "relay.error" in log_events(log), 10, "a relay.error log line")
            assert unpublished(engine) == 2
            redis.delete(STREAM)
            # The relay marks rows published only after its XADD: wait for the mark.
            wait_until(lambda: unpublished(engine) == 0, 10, "both rows marked published")
            assert redis.xlen(STREAM) == 2
            assert process.poll() is None


def tail_lines(log: Path) -> list[str]:
    return log.read_text().splitlines()


def tailing_clients(redis: Redis) -> int:
    return sum(client["cmd"] == "xread" for client in redis.client_list())


class TestEventsTail:
    """``leadscout events tail`` prints one line per event and exits 0 on Ctrl-C."""

    def test_from_start_prints_one_line_per_event_with_its_summary(
        self, world, engine, redis, database_url, redis_url, tmp_path
    ):
        template = world.template()
        world.initiate(**body(world.contact(), template, campaignId="spring"))
        world.initiate(**body(world.contact(opted_out=True), template, campaignId="spring"))
        relay_batch(engine, redis, STREAM)
        created, rejected = (row.payload for row in outbox_rows(engine))
        log = tmp_path / "tail.log"
        env = service_env(database_url, redis_url)
        with running(["events", "tail", "--from-start"], env, log, interruptible=True) as process:
            wait_until(lambda: len(tail_lines(log)) >= 2, 30, "2 tail lines")
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=5) == 0
        data = created["data"]
        assert tail_lines(log) == [
            f"{created['time']} leadscout.conversation.created {data['conversationId']}"
            f" {world.workspace_id} conversation={data['conversationId']}"
            f" channel={data['channelId']} campaign=spring",
            f"{rejected['time']} leadscout.initiation.rejected {rejected['subject']}"
            f" {world.workspace_id} code=ContactOptedOut"
            f" contact={rejected['data']['contactId']} campaign=spring",
        ]

    def test_without_from_start_prints_only_events_added_after_it_started(
        self, world, engine, redis, database_url, redis_url, tmp_path
    ):
        initiate(world, 1)
        relay_batch(engine, redis, STREAM)
        log = tmp_path / "tail.log"
        env = service_env(database_url, redis_url)
        with running(["events", "tail"], env, log, interruptible=True) as process:
            wait_until(lambda: tailing_clients(redis) == 1, 30, "tail blocking on XREAD")
            insert_rejections(engine, world.workspace_id, 1)
            relay_batch(engine, redis, STREAM)
            wait_until(lambda: len(tail_lines(log)) >= 1, 10, "1 tail line")
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=5) == 0
        new = outbox_rows(engine)[-1].payload
        assert tail_lines(log) == [
            f"{new['time']} leadscout.initiation.rejected {new['subject']} {world.workspace_id}"
            f" code=ContactNotFound contact={new['data']['contactId']}"
        ]
