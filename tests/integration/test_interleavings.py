"""Races of the locked write, replayed step by step: each actor stops at a named point.

Two seams stop an actor without sleeping: ``GatedLocks`` stops it before it takes a
channel lock (it has decided, without the lock, what to lock), and an engine of its
own stops it at a chosen SQL statement (e.g. inside its write transaction). The test
then moves the world on and lets the actor go; outcomes are read from the rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import pytest
from redis import Redis
from sqlalchemy import Engine, event, func, select

from schemas.commands import InitiateOutbound
from tests.world import World, body, make_deps
from worker import handlers, lifecycle
from worker.handlers import Deps
from worker.locks import ChannelLocks, lock_key
from worker.store.commands import Outcome
from worker.store.db import make_engine
from worker.store.tables import channel_fences, commands, conversations, outbox

WAIT_S = 30


class Gate:
    """A point where one actor stops until the test opens it; it stops there once."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def stop_here(self) -> None:
        self.reached.set()
        assert self._open.wait(WAIT_S), "the gate was never opened"

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT_S), "the actor never reached the gate"

    def open(self) -> None:
        self._open.set()


class GatedLocks:
    """Real channel locks; the first ``hold`` stops at the gate before taking its lock.

    Every later ``hold`` sets ``asked_again``: the actor went back for a lock.
    """

    def __init__(self, inner: ChannelLocks, gate: Gate) -> None:
        self.inner, self.gate = inner, gate
        self.asked_again = threading.Event()

    @contextmanager
    def hold(self, channel_ids: Collection[UUID]) -> Iterator[dict[UUID, int]]:
        if self.gate.reached.is_set():
            self.asked_again.set()
        else:
            self.gate.stop_here()
        with self.inner.hold(channel_ids) as tokens:
            yield tokens


class OutrunLocks:
    """Real channel locks, but someone always took the lock after us: our token is stale."""

    def __init__(self, inner: ChannelLocks) -> None:
        self.inner = inner

    @contextmanager
    def hold(self, channel_ids: Collection[UUID]) -> Iterator[dict[UUID, int]]:
        with self.inner.hold(channel_ids) as tokens:
            yield {channel_id: token - 1 for channel_id, token in tokens.items()}


Step = Callable[[str], bool]


@contextmanager
def engine_stopping(
    database_url: str, gate: Gate, *steps: Step, after: bool = False
) -> Iterator[Engine]:
    """An engine of the actor's own that watches for SQL ``steps`` in order (other statements
    may come between) and stops at ``gate`` just before the last one, or just after it."""
    engine = make_engine(database_url, pool_size=2)
    pending = list(steps)

    @event.listens_for(engine, "before_cursor_execute")
    def before_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if len(pending) > 1 and pending[0](statement):
            pending.pop(0)
        elif len(pending) == 1 and not after and pending[0](statement):
            pending.pop()
            gate.stop_here()

    @event.listens_for(engine, "after_cursor_execute")
    def after_statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if len(pending) == 1 and after and pending[0](statement):
            pending.pop()
            gate.stop_here()

    try:
        yield engine
    finally:
        engine.dispose()


def command_claim(sql: str) -> bool:
    return "FROM commands" in sql and "FOR UPDATE" in sql


def quota_read(sql: str) -> bool:
    """The last read of check 10: conversations opened per channel in 24 h."""
    return "FROM channel_openings" in sql


def conversation_written(sql: str) -> bool:
    """Counting the opening: the statement right after the fresh conversations' COPY (which
    goes to psycopg directly, around SQLAlchemy's events)."""
    return sql.startswith("INSERT INTO channel_openings")


def reuse_lock(sql: str) -> bool:
    return sql.startswith("SELECT conversations.status, conversations.control") and (
        "FOR UPDATE" in sql
    )


class Actor(threading.Thread):
    """One delivery of a command, run in its own thread."""

    def __init__(self, command: InitiateOutbound, deps: Any, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.command, self.deps, self.done = command, deps, done
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.outcome = handlers.initiate_outbound(self.command, self.deps)
        except BaseException as error:
            self.error = error
        finally:
            self.done.set()

    def result(self) -> Outcome:
        self.join(WAIT_S)
        if self.error is not None:
            raise self.error
        assert self.outcome is not None, "the actor did not finish"
        return self.outcome


def start(command: InitiateOutbound, deps: Any) -> Actor:
    actor = Actor(command, deps, threading.Event())
    actor.start()
    return actor


def expire_lock(redis: Redis, channel_id: UUID) -> None:
    """What the lock's TTL does, now: the key is gone and anyone may take the lock."""
    assert redis.delete(lock_key(channel_id)) == 1


def close(engine: Engine, workspace_id: UUID, conversation_id: UUID) -> None:
    with engine.begin() as conn:
        conversation = lifecycle.find(conn, workspace_id, conversation_id, lock=True)
        assert conversation is not None
        lifecycle.close(conn, conversation)


def rows(engine: Engine, *columns: Any, where: Any = True) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(select(*columns).where(where))]


def count(engine: Engine, table: Any, where: Any = True) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())


def stored(engine: Engine, command: InitiateOutbound) -> tuple[str, str | None]:
    [(status, code)] = rows(
        engine, commands.c.status, commands.c.error_code, where=commands.c.id == command.command_id
    )
    return status, code


def events_of(engine: Engine, command: InitiateOutbound) -> list[str]:
    return [
        event_type
        for (event_type,) in rows(
            engine, outbox.c.event_type, where=outbox.c.command_id == command.command_id
        )
    ]


class TestDeliveryThatDecidedBeforeTheFirstCommitted:
    """A second delivery that chose a channel while the first was still writing returns
    the first's outcome once it holds the lock: it neither overwrites it nor writes again."""

    def deliver_twice(self, world: World, command: InitiateOutbound) -> tuple[Outcome, Outcome]:
        gate = Gate()
        second = start(command, Deps(world.engine, GatedLocks(world.deps.locks, gate)))  # type: ignore[arg-type]
        gate.wait_reached()
        first = handlers.initiate_outbound(command, world.deps)
        gate.open()
        return first, second.result()

    def test_on_the_only_channel_the_success_is_kept_not_turned_into_a_409(self, engine, redis):
        world = World(engine, redis)
        world.channel(world.agent())
        command = world.command(**body(world.contact(), world.template()))

        first, second = self.deliver_twice(world, command)

        assert first.status == "succeeded"
        assert second.command_id == command.command_id
        assert (second.status, second.result, second.error) == ("succeeded", first.result, None)
        assert second.event_ids == ()
        assert stored(engine, command) == ("succeeded", None)
        assert events_of(engine, command) == ["leadscout.conversation.created"]
        assert count(engine, conversations) == 1

    def test_with_a_free_second_channel_no_second_conversation_is_opened(self, engine, redis):
        world = World(engine, redis)
        agent = world.agent()
        first_choice = world.channel(agent, priority=0)
        world.channel(agent, priority=1)
        command = world.command(**body(world.contact(), world.template()))

        first, second = self.deliver_twice(world, command)

        assert first.result["conversation"]["channelId"] == str(first_choice)
        assert (second.status, second.result) == ("succeeded", first.result)
        assert rows(engine, conversations.c.channel_id) == [(first_choice,)]
        assert events_of(engine, command) == ["leadscout.conversation.created"]


class TestRejectionThatRacedTheFirstDelivery:
    """A second delivery that reached a rejection while the first recorded it returns
    the first's outcome: one rejected event, not two."""

    def test_the_second_delivery_writes_nothing(self, engine, redis, database_url):
        world = World(engine, redis)
        world.channel(world.agent())
        command = world.command(**body(world.contact(opted_out=True), world.template()))
        gate = Gate()
        with engine_stopping(database_url, gate, command_claim) as own_engine:
            second = start(command, make_deps(own_engine, redis))
            gate.wait_reached()
            first = handlers.initiate_outbound(command, world.deps)
            gate.open()
            late = second.result()

        assert first.error["code"] == "ContactOptedOut"
        assert (late.command_id, late.status) == (command.command_id, "failed")
        assert (late.error, late.event_ids) == (first.error, ())
        assert events_of(engine, command) == ["leadscout.initiation.rejected"]


class TestTargetMovedUnderTheLock:
    """When the re-check under channel X's lock picks channel Y, the worker lets X go and
    takes Y's lock before writing: it never writes on Y beside Y's legitimate holder.

    Y allows one conversation a day. Holder D is writing its conversation on Y when B,
    under X's lock, finds X taken by its contact's new conversation and turns to Y.
    """

    def test_the_mover_waits_for_y_and_y_stays_within_its_daily_limit(
        self, engine, redis, database_url
    ):
        world = World(engine, redis)
        agent, template = world.agent(), world.template()
        x = world.channel(agent, priority=0)
        y = world.channel(agent, priority=1, dailyLimit=1)
        contact, other_contact = world.contact(), world.contact()
        mover = world.command(**body(contact, template))
        gate_b, gate_d = Gate(), Gate()
        b_locks = GatedLocks(world.deps.locks, gate_b)
        b = Actor(mover, Deps(engine, b_locks), b_locks.asked_again)  # type: ignore[arg-type]
        b.start()
        gate_b.wait_reached()  # B chose X without the lock
        on_x = world.initiate(**body(contact, template, providerChannelId=x))
        with engine_stopping(database_url, gate_d, conversation_written, after=True) as d_engine:
            d_command = world.command(**body(other_contact, template, providerChannelId=y))
            d = start(d_command, make_deps(d_engine, redis))
            gate_d.wait_reached()  # D holds Y's lock and fence, its conversation not committed
            gate_b.open()
            assert b_locks.asked_again.wait(WAIT_S)  # B either asked for Y's lock or finished
            gate_d.open()
            d_outcome, b_outcome = d.result(), b.result()

        assert d_outcome.status == "succeeded"
        assert b_outcome.error["code"] == "AllProviderChannelsOccupied"
        assert b_outcome.error["blockingConversationIds"] == [on_x.result["conversation"]["id"]]
        assert rows(engine, conversations.c.contact_id, where=conversations.c.channel_id == y) == [
            (other_contact,)
        ]
        assert stored(engine, mover) == ("failed", "AllProviderChannelsOccupied")


class TestStaleHolderInsideItsWrite:
    """A holder that read the channel's state, then stalled past its lock's TTL inside its
    write transaction, is refused by its fence: the channel keeps its daily limit."""

    def test_the_stale_holder_loses_to_the_one_who_took_the_lock(self, engine, redis, database_url):
        world = World(engine, redis)
        channel = world.channel(world.agent(), dailyLimit=1)
        template, first_contact, second_contact = world.template(), world.contact(), world.contact()
        stale = world.command(**body(first_contact, template, providerChannelId=channel))
        gate = Gate()
        with engine_stopping(
            database_url, gate, command_claim, quota_read, after=True
        ) as own_engine:
            holder = start(stale, make_deps(own_engine, redis))
            gate.wait_reached()  # under the lock it re-read the quota: one left today
            expire_lock(redis, channel)
            taker = world.initiate(**body(second_contact, template, providerChannelId=channel))
            gate.open()
            late = holder.result()

        assert taker.status == "succeeded"
        assert late.status == "failed"
        assert late.error["code"] == "ChannelDailyLimitReached"
        assert late.error["channelId"] == str(channel)
        assert rows(engine, conversations.c.contact_id) == [(second_contact,)]
        assert stored(engine, stale) == ("failed", "ChannelDailyLimitReached")
        # Tokens: the stale holder's (1), the taker's (2), the stale holder's second round (3).
        assert rows(engine, channel_fences.c.token) == [(3,)]


class TestConversationClosedUnderAReuse:
    """A conversation closed between the re-check and the reuse is not reused: the command
    starts over and opens a fresh one."""

    @pytest.mark.parametrize("explicit", [False, True])
    def test_a_fresh_conversation_is_opened(self, engine, redis, database_url, explicit):
        world = World(engine, redis)
        channel = world.channel(world.agent())
        template, contact = world.template(), world.contact()
        where = {"providerChannelId": channel} if explicit else {}
        active = world.initiate(**body(contact, template, **where)).result["conversation"]["id"]
        again = world.command(**body(contact, template, forceSend=True, **where))
        gate = Gate()
        with engine_stopping(database_url, gate, reuse_lock) as own_engine:
            reuser = start(again, make_deps(own_engine, redis))
            gate.wait_reached()
            close(engine, world.workspace_id, UUID(active))
            gate.open()
            outcome = reuser.result()

        assert outcome.result["alreadyInitiated"] is False
        fresh = outcome.result["conversation"]["id"]
        assert fresh != active
        assert set(rows(engine, conversations.c.id, conversations.c.status)) == {
            (UUID(active), "closed"),
            (UUID(fresh), "active"),
        }
        assert events_of(engine, again) == ["leadscout.conversation.created"]


class TestEndlessLostRaces:
    """A command that loses every race gives up after a bounded number of attempts, for
    the task to retry later, having written nothing."""

    def test_selection_contention_names_the_command(self, engine, redis):
        world = World(engine, redis)
        channel = world.channel(world.agent())
        command = world.command(**body(world.contact(), world.template()))

        with pytest.raises(handlers.SelectionContention) as raised:
            handlers.initiate_outbound(command, Deps(engine, OutrunLocks(world.deps.locks)))  # type: ignore[arg-type]

        assert str(raised.value) == str(command.command_id)
        assert stored(engine, command) == ("processing", None)
        assert count(engine, conversations) == 0
        assert events_of(engine, command) == []
        assert rows(engine, channel_fences.c.channel_id, channel_fences.c.token) == [
            (channel, handlers.MAX_ATTEMPTS)
        ]
