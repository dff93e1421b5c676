"""Invariants 1 and 3 under real concurrency: threads, a stalled lock holder, redelivery."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy import Engine, func, select
from structlog.testing import capture_logs

from schemas.commands import InitiateOutbound
from tests.concurrency import run_at_once
from tests.processes import wait_until
from tests.world import World, body, make_deps
from worker import handlers
from worker.handlers import Deps
from worker.store import fences
from worker.store.commands import Outcome
from worker.store.tables import channel_fences, conversations, messages, outbox


class TestRunAtOnce:
    """The helper returns outcomes in job order and fails loudly on a raising or hung job."""

    def test_outcomes_come_back_in_job_order(self):
        jobs = [lambda n=n: Outcome(UUID(int=n), "succeeded") for n in range(5)]

        assert [o.command_id.int for o in run_at_once(jobs)] == [0, 1, 2, 3, 4]

    def test_a_raising_job_fails_with_its_own_exception(self):
        def broken() -> Outcome:
            raise KeyError("boom")

        with pytest.raises(AssertionError, match="job 1 of 2 raised") as failed:
            run_at_once([lambda: Outcome(UUID(int=0), "succeeded"), broken])

        assert isinstance(failed.value.__cause__, KeyError)

    def test_a_hung_job_fails_naming_it_and_where_it_waits(self):
        release = threading.Event()

        def hang() -> Outcome:
            release.wait(30)
            return Outcome(UUID(int=1), "succeeded")

        try:
            with pytest.raises(pytest.fail.Exception) as failed:
                run_at_once([lambda: Outcome(UUID(int=0), "succeeded"), hang], timeout_s=0.5)
        finally:
            release.set()

        assert "1 job(s) still running after 0.5s; job 1 is at:" in str(failed.value)
        assert "in hang" in str(failed.value)


def count(engine: Engine, table: Any, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def codes(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(
        ("reused" if o.result["alreadyInitiated"] else "created")
        if o.status == "succeeded"
        else o.error["code"]
        for o in outcomes
    )


class TestFiftyCommandsForOneContactAndChannel:
    """Fifty simultaneous initiations for one contact on one channel open one conversation."""

    def setup_world(self, engine: Engine, redis: Any) -> tuple[World, UUID, UUID, UUID]:
        world = World(engine, redis)
        channel = world.channel(world.agent())
        return world, channel, world.template(), world.contact()

    def test_explicit_channel_gives_one_created_and_49_active_conversation_exists(
        self, engine, redis
    ):
        world, channel, template, contact = self.setup_world(engine, redis)
        commands = [
            world.command(**body(contact, template, providerChannelId=channel)) for _ in range(50)
        ]
        outcomes = run_at_once(
            [lambda c=c: handlers.initiate_outbound(c, world.deps) for c in commands]
        )
        assert codes(outcomes) == {"created": 1, "ActiveConversationExists": 49}
        winner = next(o for o in outcomes if o.status == "succeeded")
        blocking = {o.error["blockingConversationId"] for o in outcomes if o.status == "failed"}
        assert blocking == {winner.result["conversation"]["id"]}
        assert count(engine, conversations) == 1
        assert count(engine, messages) == 1
        assert count(engine, outbox, outbox.c.event_type == "leadscout.initiation.rejected") == 49
        assert count(engine, outbox, outbox.c.event_type == "leadscout.conversation.created") == 1

    def test_auto_selection_gives_one_created_and_49_all_channels_occupied(self, engine, redis):
        world, _, template, contact = self.setup_world(engine, redis)
        commands = [world.command(**body(contact, template)) for _ in range(50)]
        outcomes = run_at_once(
            [lambda c=c: handlers.initiate_outbound(c, world.deps) for c in commands]
        )
        assert codes(outcomes) == {"created": 1, "AllProviderChannelsOccupied": 49}
        assert count(engine, conversations) == 1

    def test_force_send_gives_one_created_and_49_reused(self, engine, redis):
        world, channel, template, contact = self.setup_world(engine, redis)
        commands = [
            world.command(**body(contact, template, providerChannelId=channel, forceSend=True))
            for _ in range(50)
        ]
        outcomes = run_at_once(
            [lambda c=c: handlers.initiate_outbound(c, world.deps) for c in commands]
        )
        assert codes(outcomes) == {"created": 1, "reused": 49}
        assert len({o.result["conversation"]["id"] for o in outcomes}) == 1
        assert count(engine, conversations) == 1
        assert count(engine, messages) == 50
        assert count(engine, outbox, outbox.c.event_type == "leadscout.conversation.reused") == 49


class TestDatabaseIsTheLastGuard:
    """Without lock or fence, the partial unique index still allows one active conversation."""

    def test_unguarded_writers_get_one_created_and_clean_409s(self, engine, redis, monkeypatch):
        monkeypatch.setattr(fences, "check", lambda *args: None)
        world = World(engine, redis)
        channel = world.channel(world.agent())
        template, contact = world.template(), world.contact()
        no_locks = Deps(engine=engine, locks=UnlockedChannels(engine))  # type: ignore[arg-type]
        commands = [
            world.command(**body(contact, template, providerChannelId=channel)) for _ in range(20)
        ]
        outcomes = run_at_once(
            [lambda c=c: handlers.initiate_outbound(c, no_locks) for c in commands]
        )
        assert codes(outcomes) == {"created": 1, "ActiveConversationExists": 19}
        assert count(engine, conversations, conversations.c.status == "active") == 1


class UnlockedChannels:
    """Takes no lock at all."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def hold(self, channel_ids: Collection[UUID]) -> Iterator[dict[UUID, int]]:
        yield {channel_id: 0 for channel_id in channel_ids}


class StallingLocks:
    """Real channel locks whose holder stalls after acquiring, until told to go on."""

    def __init__(self, inner: Any, acquired: threading.Event, resume: threading.Event) -> None:
        self.inner, self.acquired, self.resume = inner, acquired, resume

    @contextmanager
    def hold(self, channel_ids: Collection[UUID]) -> Iterator[dict[UUID, int]]:
        with self.inner.hold(channel_ids) as tokens:
            if not self.acquired.is_set():
                self.acquired.set()
                assert self.resume.wait(30)
            yield tokens


class TestStalledLockHolder:
    """A holder whose lock expired while it stalled cannot write; it answers cleanly."""

    def test_late_writer_gets_active_conversation_exists(self, engine, redis):
        world = World(engine, redis)
        channel = world.channel(world.agent())
        template, contact = world.template(), world.contact()
        ttl_ms = 300
        acquired, resume = threading.Event(), threading.Event()
        stalled_deps = Deps(
            engine=engine,
            locks=StallingLocks(make_deps(engine, redis, ttl_ms=ttl_ms).locks, acquired, resume),  # type: ignore[arg-type]
        )
        late = world.command(**body(contact, template, providerChannelId=channel))
        prompt = world.command(**body(contact, template, providerChannelId=channel))
        late_result: list[Outcome] = []
        stalled = threading.Thread(
            target=lambda: late_result.append(handlers.initiate_outbound(late, stalled_deps))
        )
        with capture_logs() as logs:
            stalled.start()
            assert acquired.wait(10)
            lock_key = f"leadscout:lock:channel:{channel}"
            wait_until(
                lambda: not redis.exists(lock_key), 10, "the stalled holder's lock to expire"
            )
            prompt_outcome = handlers.initiate_outbound(
                prompt, make_deps(engine, redis, ttl_ms=ttl_ms)
            )
            resume.set()
            stalled.join(30)
            assert not stalled.is_alive(), "the stalled holder never finished"

        assert prompt_outcome.status == "succeeded"
        conversation_id = prompt_outcome.result["conversation"]["id"]
        [late_outcome] = late_result
        assert late_outcome.status == "failed"
        assert late_outcome.error["code"] == "ActiveConversationExists"
        assert late_outcome.error["status"] == 409
        assert late_outcome.error["blockingConversationId"] == conversation_id
        assert count(engine, conversations) == 1
        # The stalled holder's write was refused by its fence (token 1 < 2), and its
        # second round, under the lock again (token 3), opened nothing.
        assert [e["reason"] for e in logs if e["event"] == "initiation.lost_race"] == [
            "stale_fence"
        ]
        with engine.connect() as conn:
            token = conn.execute(
                select(channel_fences.c.token).where(channel_fences.c.channel_id == channel)
            ).scalar_one()
        assert token == 3


class TestRedelivery:
    """A command delivered twice does its work once and keeps one outcome."""

    def test_sequential_redelivery_returns_the_first_outcome(self, engine, redis):
        world = World(engine, redis)
        world.channel(world.agent())
        command = world.command(**body(world.contact(), world.template()))
        first = handlers.initiate_outbound(command, world.deps)
        again = handlers.initiate_outbound(command, world.deps)
        assert (again.status, again.result, again.error) == (
            first.status,
            first.result,
            first.error,
        )
        assert again.event_ids == ()  # the redelivery wrote no event
        self.assert_one_effect(engine, command)

    def test_concurrent_redelivery_does_the_work_once(self, engine, redis):
        world = World(engine, redis)
        world.channel(world.agent())
        command = world.command(**body(world.contact(), world.template()))
        outcomes = run_at_once([lambda: handlers.initiate_outbound(command, world.deps)] * 10)
        assert {o.result["conversation"]["id"] for o in outcomes} == {
            outcomes[0].result["conversation"]["id"]
        }
        self.assert_one_effect(engine, command)

    def test_redelivered_rejection_keeps_one_rejected_event(self, engine, redis):
        world = World(engine, redis)
        command = world.command(**body(world.contact(opted_out=True), world.template()))
        outcomes = run_at_once([lambda: handlers.initiate_outbound(command, world.deps)] * 5)
        assert {o.error["code"] for o in outcomes} == {"ContactOptedOut"}
        assert count(engine, outbox, outbox.c.command_id == command.command_id) == 1

    @staticmethod
    def assert_one_effect(engine: Engine, command: InitiateOutbound) -> None:
        assert count(engine, conversations) == 1
        assert count(engine, messages) == 1
        assert count(engine, outbox, outbox.c.command_id == command.command_id) == 1
