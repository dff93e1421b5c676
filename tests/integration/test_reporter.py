"""The reporting subscriber against real PostgreSQL and Redis (SPEC 4.5, 6)."""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from sqlalchemy import Engine, event

from tests import web
from tests.processes import running, service_env, wait_until
from tests.world import World, body
from worker.relay import relay_batch
from worker.reporter import GROUP, Reporter, unacknowledged
from worker.store import campaign_stats

STREAM = "leadscout:events"
CREATED = "leadscout.conversation.created"
REUSED = "leadscout.conversation.reused"
REJECTED = "leadscout.initiation.rejected"


def envelope(type_: str, workspace_id: UUID, data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A CloudEvent as SPEC 6 writes it; ``fields`` replace envelope members."""
    return {
        "specversion": "1.0",
        "id": str(uuid4()),
        "type": type_,
        "source": "leadscout-outbound",
        "time": "2026-11-25T10:00:00.000000Z",
        "subject": str(uuid4()),
        "datacontenttype": "application/json",
        "workspaceid": str(workspace_id),
        "data": data,
        **fields,
    }


def initiation(
    workspace_id: UUID, campaign_id: str | None, channel_id: UUID, reused: bool = False
) -> dict[str, Any]:
    data = {
        "commandId": str(uuid4()),
        "conversationId": str(uuid4()),
        "contactId": str(uuid4()),
        "channelId": str(channel_id),
        "agentId": str(uuid4()),
        "brandId": None,
        "campaignId": campaign_id,
        "templateId": str(uuid4()),
        "followUpsCount": 0,
        "alreadyInitiated": reused,
        "previousControl": "human" if reused else None,
        "message": {
            "messaging_product": "whatsapp",
            "to": "+5215598765432",
            "type": "template",
            "template": {"name": "welcome_v2", "language": {"code": "es_MX"}},
        },
    }
    return envelope(REUSED if reused else CREATED, workspace_id, data)


def rejection(workspace_id: UUID, campaign_id: str | None, code: str) -> dict[str, Any]:
    data = {
        "commandId": str(uuid4()),
        "contactId": str(uuid4()),
        "campaignId": campaign_id,
        "code": code,
    }
    return envelope(REJECTED, workspace_id, data)


def closed(workspace_id: UUID) -> dict[str, Any]:
    data = {"conversationId": str(uuid4()), "contactId": str(uuid4()), "channelId": str(uuid4())}
    return envelope("leadscout.conversation.closed", workspace_id, data)


def add(redis: Redis, *events: dict[str, Any]) -> None:
    for item in events:
        redis.xadd(STREAM, {"event": json.dumps(item)})


def stats(engine: Engine, workspace_id: UUID, campaign_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return campaign_stats.read(conn, workspace_id, campaign_id).model_dump(mode="json")


def zeros(campaign_id: str) -> dict[str, Any]:
    return {"campaignId": campaign_id, "created": 0, "reused": 0, "rejected": {}, "byChannel": {}}


def drain(reporter: Reporter) -> None:
    """Steps until a read finds nothing new."""
    while reporter.step():
        pass


def pending(redis: Redis) -> int:
    return int(redis.xpending(STREAM, GROUP)["pending"])


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def results() -> dict[str, float]:
    kinds = ("counted", "duplicate", "ignored", "malformed")
    return {kind: sample("leadscout_reporter_events_total", result=kind) for kind in kinds}


def added(before: dict[str, float]) -> dict[str, float]:
    return {kind: n - before[kind] for kind, n in results().items()}


def make_reporter(engine: Engine, redis: Redis, consumer: str, **options: Any) -> Reporter:
    options.setdefault("block_ms", 20)
    return Reporter(engine, redis, STREAM, consumer=consumer, **options)


@pytest.fixture
def reporter(engine: Engine, redis: Redis) -> Reporter:
    reporter = make_reporter(engine, redis, "reporter-a")
    reporter.ensure_group()
    return reporter


@pytest.fixture
def workspace() -> UUID:
    return uuid4()


@pytest.fixture
def channels() -> tuple[UUID, UUID]:
    return uuid4(), uuid4()


class TestCounting:
    """Each event adds one: created and reused per channel, rejected per code, per campaign."""

    def test_a_campaign_counts_outcomes_by_channel_and_code(
        self, reporter, engine, redis, workspace, channels
    ):
        one, two = channels
        add(
            redis,
            initiation(workspace, "spring", one),
            initiation(workspace, "spring", one),
            initiation(workspace, "spring", two),
            initiation(workspace, "spring", one, reused=True),
            rejection(workspace, "spring", "ContactOptedOut"),
            rejection(workspace, "spring", "ContactOptedOut"),
            rejection(workspace, "spring", "ChannelDailyLimitReached"),
        )
        before = results()

        drain(reporter)

        assert stats(engine, workspace, "spring") == {
            "campaignId": "spring",
            "created": 3,
            "reused": 1,
            "rejected": {"ChannelDailyLimitReached": 1, "ContactOptedOut": 2},
            "byChannel": {
                str(one): {"created": 2, "reused": 1},
                str(two): {"created": 1, "reused": 0},
            },
        }
        assert added(before) == {"counted": 7, "duplicate": 0, "ignored": 0, "malformed": 0}
        assert pending(redis) == 0

    def test_the_same_event_in_two_entries_counts_once(
        self, reporter, engine, redis, workspace, channels
    ):
        twice = initiation(workspace, "spring", channels[0])
        add(redis, twice, twice)
        drain(reporter)
        add(redis, twice)
        before = results()

        drain(reporter)

        assert stats(engine, workspace, "spring")["created"] == 1
        assert added(before) == {"counted": 0, "duplicate": 1, "ignored": 0, "malformed": 0}
        assert pending(redis) == 0

    def test_other_types_and_events_without_a_campaign_are_acknowledged_uncounted(
        self, reporter, engine, redis, workspace, channels
    ):
        add(
            redis,
            closed(workspace),
            envelope("leadscout.conversation.handed_off", workspace, {"userId": str(uuid4())}),
            envelope("leadscout.something.new", workspace, {"campaignId": "spring"}),
            initiation(workspace, None, channels[0]),
            rejection(workspace, None, "ContactNotFound"),
        )
        before = results()

        drain(reporter)

        assert stats(engine, workspace, "spring") == zeros("spring")
        assert added(before) == {"counted": 0, "duplicate": 0, "ignored": 5, "malformed": 0}
        assert pending(redis) == 0

    def test_campaigns_and_workspaces_are_counted_apart(self, reporter, engine, redis, channels):
        ours, theirs = uuid4(), uuid4()
        add(
            redis,
            initiation(ours, "spring", channels[0]),
            initiation(ours, "autumn", channels[0]),
            initiation(ours, "autumn", channels[0]),
            initiation(theirs, "spring", channels[1], reused=True),
        )
        drain(reporter)

        assert stats(engine, ours, "spring")["byChannel"] == {
            str(channels[0]): {"created": 1, "reused": 0}
        }
        assert stats(engine, ours, "autumn")["created"] == 2
        assert stats(engine, theirs, "spring")["byChannel"] == {
            str(channels[1]): {"created": 0, "reused": 1}
        }
        assert stats(engine, theirs, "autumn") == zeros("autumn")

    def test_an_unknown_campaign_answers_zeros(self, engine, workspace):
        assert stats(engine, workspace, "never-named") == zeros("never-named")


class TestEventsFromTheRealProducer:
    """Events the handler wrote and the relay sent are counted as their outcomes say."""

    def test_created_reused_and_rejected_initiations(self, reporter, engine, redis):
        world = World(engine, redis)
        channel = world.channel(world.agent())
        template, contact = world.template(), world.contact()
        world.initiate(**body(contact, template, campaignId="launch"))
        world.initiate(**body(contact, template, campaignId="launch", forceSend=True))
        world.initiate(**body(world.contact(opted_out=True), template, campaignId="launch"))
        world.initiate(**body(uuid4(), template, campaignId="launch"))
        world.initiate(**body(world.contact(), template))
        assert relay_batch(engine, redis, STREAM) == 5

        drain(reporter)

        assert stats(engine, world.workspace_id, "launch") == {
            "campaignId": "launch",
            "created": 1,
            "reused": 1,
            "rejected": {"ContactNotFound": 1, "ContactOptedOut": 1},
            "byChannel": {str(channel): {"created": 1, "reused": 1}},
        }


MALFORMED = {
    "no event field": {b"other": b"{}"},
    "not json": {b"event": b"{not json"},
    "not utf-8": {b"event": b'{"type": "\xff\xfe"}'},
    "not an object": {b"event": b"[1, 2]"},
    "no type": {b"event": b'{"id": "x"}'},
    "deeply nested": {b"event": b"[" * 100_000 + b"]" * 100_000},
}


def counted_but_broken(workspace: UUID, channel: UUID) -> dict[str, dict[bytes, bytes]]:
    """Counted types whose members are missing or wrong."""
    no_channel = initiation(workspace, "spring", channel)
    del no_channel["data"]["channelId"]
    bad_id = initiation(workspace, "spring", channel) | {"id": "not-a-uuid"}
    bad_campaign = initiation(workspace, "spring spaces", channel)
    empty_code = rejection(workspace, "spring", "")
    broken = {
        "no channelId": no_channel,
        "bad id": bad_id,
        "bad campaign": bad_campaign,
        "empty code": empty_code,
    }
    return {name: {b"event": json.dumps(item).encode()} for name, item in broken.items()}


class TestMalformedEntries:
    """An unreadable entry is logged, acknowledged and counted as malformed, never retried."""

    @pytest.mark.parametrize(
        "name", [*MALFORMED, "no channelId", "bad id", "bad campaign", "empty code"]
    )
    def test_is_acknowledged_and_the_entries_around_it_are_counted(
        self, reporter, engine, redis, workspace, channels, name
    ):
        fields = {**MALFORMED, **counted_but_broken(workspace, channels[0])}[name]
        add(redis, initiation(workspace, "spring", channels[0]))
        redis.xadd(STREAM, fields)
        add(redis, initiation(workspace, "spring", channels[0]))
        before = results()

        drain(reporter)

        assert stats(engine, workspace, "spring")["created"] == 2
        assert added(before) == {"counted": 2, "duplicate": 0, "ignored": 0, "malformed": 1}
        assert pending(redis) == 0


def assert_counted_once(engine: Engine, workspace: UUID) -> None:
    """The three events of ``TestRedelivery.three``, each counted exactly once."""
    counts = stats(engine, workspace, "spring")
    assert (counts["created"], counts["reused"], counts["rejected"]) == (
        1,
        1,
        {"ContactOptedOut": 1},
    )


class TestRedelivery:
    """Entries delivered but never acknowledged are taken over and never counted twice."""

    @pytest.fixture
    def three(self, redis, workspace, channels) -> None:
        one, two = channels
        add(
            redis,
            initiation(workspace, "spring", one),
            initiation(workspace, "spring", two, reused=True),
            rejection(workspace, "spring", "ContactOptedOut"),
        )

    def test_a_crash_between_commit_and_ack_adds_nothing_on_redelivery(
        self, reporter, engine, redis, workspace, three
    ):
        entries = reporter.read()
        assert reporter.count(entries) == 3  # committed; the reporter dies before XACK
        assert pending(redis) == 3
        before = results()

        drain(make_reporter(engine, redis, "reporter-b", claim_idle_ms=0))

        assert_counted_once(engine, workspace)
        assert added(before) == {"counted": 0, "duplicate": 3, "ignored": 0, "malformed": 0}
        assert pending(redis) == 0

    def test_a_crash_before_commit_leaves_the_batch_to_another_consumer(
        self, reporter, engine, redis, workspace, three
    ):
        assert len(reporter.read()) == 3  # delivered; the reporter dies before counting

        drain(make_reporter(engine, redis, "reporter-b", claim_idle_ms=0))

        assert_counted_once(engine, workspace)
        assert pending(redis) == 0

    def test_entries_idle_less_than_the_threshold_stay_with_their_consumer(
        self, reporter, engine, redis, workspace, three
    ):
        reporter.read()

        drain(make_reporter(engine, redis, "reporter-b", claim_idle_ms=60_000))

        assert stats(engine, workspace, "spring") == zeros("spring")
        consumers = {c["name"]: c["pending"] for c in redis.xinfo_consumers(STREAM, GROUP)}
        assert consumers == {b"reporter-a": 3, b"reporter-b": 0}

    def test_a_restart_under_the_same_name_reads_its_own_pending_entries_first(
        self, reporter, engine, redis, workspace, three
    ):
        reporter.read()

        drain(make_reporter(engine, redis, "reporter-a"))

        assert_counted_once(engine, workspace)
        assert pending(redis) == 0

    def test_a_failed_commit_is_counted_from_the_own_backlog_after_the_failure(
        self, reporter, engine, redis, workspace, three
    ):
        with failing_commits(engine), pytest.raises(SimulatedCrash):
            reporter.step()
        assert stats(engine, workspace, "spring") == zeros("spring")
        assert pending(redis) == 3

        reporter.after_failure()
        drain(reporter)

        assert_counted_once(engine, workspace)
        assert pending(redis) == 0

    def test_a_pending_entry_deleted_from_the_stream_is_acknowledged(
        self, reporter, engine, redis, workspace, three
    ):
        first, *_ = (entry_id for entry_id, _ in reporter.read())
        redis.xdel(STREAM, first)

        drain(make_reporter(engine, redis, "reporter-b", claim_idle_ms=0))

        counts = stats(engine, workspace, "spring")
        assert (counts["created"], counts["reused"], counts["rejected"]) == (
            0,
            1,
            {"ContactOptedOut": 1},
        )
        assert pending(redis) == 0


class SimulatedCrash(Exception):
    """The reporter's transaction failed at its commit."""


@contextmanager
def failing_commits(engine: Engine) -> Iterator[None]:
    def crash(conn: Any) -> None:
        raise SimulatedCrash

    event.listen(engine, "commit", crash)
    try:
        yield
    finally:
        event.remove(engine, "commit", crash)


def fully_acknowledged(redis: Redis) -> bool:
    [group] = [g for g in redis.xinfo_groups(STREAM) if g["name"] == GROUP.encode()]
    newest = redis.xrevrange(STREAM, count=1)[0][0]
    return bool(group["pending"] == 0 and group["last-delivered-id"] == newest)


def run_reporters(reporters: list[Reporter]) -> list[Exception]:
    """Runs each reporter in a thread, released together, until the group acknowledged all."""
    barrier = threading.Barrier(len(reporters))
    errors: list[Exception] = []

    def consume(reporter: Reporter) -> None:
        barrier.wait()
        try:
            while not fully_acknowledged(reporter.redis):
                reporter.step()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(r,)) for r in reporters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


class TestConcurrentReporters:
    """Three reporters taking entries from each other as they go still count each event once."""

    def test_360_entries_of_300_events_count_exactly(self, engine, redis, workspace, channels):
        one, two = channels
        events = [
            *(initiation(workspace, "spring", one) for _ in range(120)),
            *(initiation(workspace, "spring", two, reused=True) for _ in range(90)),
            *(rejection(workspace, "spring", "ContactOptedOut") for _ in range(60)),
            *(initiation(workspace, "autumn", two) for _ in range(30)),
        ]
        entries = events + random.Random(7).sample(events, 60)
        random.Random(8).shuffle(entries)
        add(redis, *entries)
        reporters = [
            make_reporter(engine, redis, f"reporter-{n}", claim_idle_ms=0, batch_size=15)
            for n in range(3)
        ]
        reporters[0].ensure_group()
        before = results()

        assert run_reporters(reporters) == []

        assert stats(engine, workspace, "spring") == {
            "campaignId": "spring",
            "created": 120,
            "reused": 90,
            "rejected": {"ContactOptedOut": 60},
            "byChannel": {
                str(one): {"created": 120, "reused": 0},
                str(two): {"created": 0, "reused": 90},
            },
        }
        assert stats(engine, workspace, "autumn")["created"] == 30
        assert added(before)["counted"] == 300


class TestGroup:
    """The group counts the whole retained stream and comes back if the stream is deleted."""

    def test_entries_added_before_the_group_existed_are_counted(
        self, engine, redis, workspace, channels
    ):
        add(redis, *(initiation(workspace, "spring", channels[0]) for _ in range(3)))
        reporter = make_reporter(engine, redis, "first-ever")

        assert reporter.step() == 0  # creates the group
        drain(reporter)

        assert stats(engine, workspace, "spring")["created"] == 3

    def test_a_deleted_stream_gets_its_group_back_and_counting_goes_on(
        self, reporter, engine, redis, workspace, channels
    ):
        add(redis, initiation(workspace, "spring", channels[0]))
        drain(reporter)
        redis.delete(STREAM)
        add(redis, initiation(workspace, "spring", channels[0]))

        assert reporter.step() == 0  # NOGROUP: recreated
        drain(reporter)

        assert stats(engine, workspace, "spring")["created"] == 2
        assert pending(redis) == 0


class TestLag:
    """The lag gauge is the entries the group has not acknowledged: undelivered + pending."""

    def gauge(self) -> float:
        return sample("leadscout_reporter_lag", group=GROUP)

    def test_follows_delivery_and_acknowledgement(self, engine, redis, workspace, channels):
        add(redis, *(initiation(workspace, "spring", channels[0]) for _ in range(5)))
        reporter = make_reporter(engine, redis, "reporter-a", batch_size=2)
        reporter.ensure_group()
        assert (reporter.refresh_lag(), self.gauge()) == (5, 5)

        entries = reporter.read()
        assert (reporter.refresh_lag(), self.gauge()) == (5, 5)
        reporter.handle(entries)
        assert (reporter.refresh_lag(), self.gauge()) == (3, 3)

        drain(reporter)
        assert (reporter.refresh_lag(), self.gauge()) == (0, 0)

    def test_uses_the_lag_redis_7_reports(self):
        def never(last_delivered_id: bytes) -> int:
            raise AssertionError("counted although Redis reported the lag")

        group = {"pending": 2, "lag": 3, "last-delivered-id": b"5-0"}
        assert unacknowledged(group, never) == 5

    def test_counts_the_undelivered_entries_when_redis_reports_no_lag(self):
        group = {"pending": 2, "lag": None, "last-delivered-id": b"5-0"}
        assert unacknowledged(group, lambda last: 4 if last == b"5-0" else 0) == 6

    def test_no_stream_is_no_lag(self):
        assert unacknowledged(None, lambda last: 1) == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_events(log: Path) -> list[str]:
    lines = log.read_text().splitlines()
    return [json.loads(line)["event"] for line in lines if line.startswith("{")]


def scrape(port: int) -> dict[str, float]:
    """The reporter's own metrics, name{labels} → value."""
    text = web.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("leadscout_"))
    return {name: float(value) for name, value in lines}


@contextmanager
def reporter_process(database_url: str, redis_url: str, log: Path, **env: str) -> Iterator[Any]:
    with running(["reporter"], service_env(database_url, redis_url, **env), log) as process:
        wait_until(lambda: "reporter.started" in log_events(log), 30, "the reporter to start")
        yield process


class TestReporterProcess:
    """``leadscout reporter`` counts, serves its metrics, rides out errors, stops on SIGTERM."""

    def test_counts_serves_metrics_then_stops_cleanly_on_sigterm(
        self, engine, redis, database_url, redis_url, tmp_path, workspace, channels
    ):
        log, port = tmp_path / "reporter.log", free_port()
        add(redis, initiation(workspace, "spring", channels[0]), closed(workspace))
        with reporter_process(
            database_url, redis_url, log, LEADSCOUT_METRICS_PORT=str(port)
        ) as process:
            add(redis, rejection(workspace, "spring", "ContactOptedOut"))
            wait_until(
                lambda: stats(engine, workspace, "spring")["rejected"] == {"ContactOptedOut": 1},
                10,
                "the rejection to be counted",
            )
            lag = f'leadscout_reporter_lag{{group="{GROUP}"}}'
            wait_until(lambda: scrape(port).get(lag) == 0, 10, "the lag gauge to read 0")
            metrics = scrape(port)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=5) == 0
            assert time.monotonic() - started < 3
        assert stats(engine, workspace, "spring")["created"] == 1
        assert {
            result: metrics.get(f'leadscout_reporter_events_total{{result="{result}"}}')
            for result in ("counted", "ignored")
        } == {"counted": 2, "ignored": 1}
        assert log_events(log)[-1] == "reporter.stopped"

    def test_keeps_running_through_redis_errors_and_counts_once_redis_recovers(
        self, engine, redis, database_url, redis_url, tmp_path, workspace, channels
    ):
        log = tmp_path / "reporter.log"
        with reporter_process(database_url, redis_url, log) as process:
            redis.delete(STREAM)
            redis.set(STREAM, "not a stream")
            wait_until(lambda: "reporter.error" in log_events(log), 10, "a reporter.error line")
            redis.delete(STREAM)
            add(redis, initiation(workspace, "spring", channels[0]))
            wait_until(
                lambda: stats(engine, workspace, "spring")["created"] == 1,
                15,
                "the event to be counted",
            )
            assert process.poll() is None
