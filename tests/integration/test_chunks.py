"""One rule, two sizes: a chunk of commands gets exactly what the same commands would get
one at a time, in the chunk's order (SPEC 4.3: "processed exactly as 4.1 would")."""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from sqlalchemy import Engine, event, func, select

from tests.concurrency import run_at_once
from tests.world import World, body
from worker import handlers, lifecycle
from worker.store.commands import Outcome
from worker.store.tables import channel_openings, conversations, follow_ups, messages, outbox


@dataclass
class Shape:
    """A random world and a random list of commands, drawn from one seed."""

    seed: int
    channels: list[dict[str, Any]] = field(default_factory=list)
    contacts: list[bool] = field(default_factory=list)  # opted out?
    history: list[tuple[int, int, bool]] = field(default_factory=list)  # contact, channel, closed
    requests: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def draw(cls, seed: int) -> Shape:
        rng = random.Random(seed)
        shape = cls(seed)
        shape.channels = [
            {"priority": rng.randint(0, 2), "dailyLimit": rng.randint(1, 6)}
            for _ in range(rng.randint(1, 4))
        ]
        shape.contacts = [rng.random() < 0.1 for _ in range(24)]
        reachable = [i for i, opted_out in enumerate(shape.contacts) if not opted_out]
        for contact in rng.sample(reachable, 6):
            shape.history.append((contact, rng.randrange(len(shape.channels)), rng.random() < 0.5))
        for _ in range(40):
            request: dict[str, Any] = {"contact": rng.randrange(len(shape.contacts) + 2)}
            if rng.random() < 0.25:
                request["forceSend"] = True
            if rng.random() < 0.2:
                request["channel"] = rng.randrange(len(shape.channels))
            if rng.random() < 0.2:
                request["additionalMessages"] = [{"type": "text", "text": f"hola {rng.random()}"}]
            shape.requests.append(request)
        return shape


class Built:
    """A Shape made real in one workspace; ids map back to the Shape's indexes."""

    def __init__(self, world: World, shape: Shape) -> None:
        self.world = world
        agent = world.agent()
        self.template = world.template()
        # Ids in the same order in every world: the last tie-break of SPEC 4.1's order is the id.
        ids = sorted(str(uuid4()) for _ in shape.channels)
        self.channels = [
            world.channel(agent, id=id_, **fields)
            for id_, fields in zip(ids, shape.channels, strict=True)
        ]
        self.contacts = [
            world.contact(opted_out=opted_out, phone=f"+52155{i:08d}")
            for i, opted_out in enumerate(shape.contacts)
        ]
        # Two ids no catalog holds: ContactNotFound.
        self.contacts += [uuid4(), uuid4()]
        self.conversation_index: dict[str, tuple[int, int]] = {}
        for contact, channel, closed in shape.history:
            outcome = world.initiate(
                **body(
                    self.contacts[contact], self.template, providerChannelId=self.channels[channel]
                )
            )
            if outcome.status == "succeeded" and closed:
                self._close(outcome.result["conversation"]["id"])
        self.commands = [world.command(**self._body(request)) for request in shape.requests]

    def _body(self, request: dict[str, Any]) -> dict[str, Any]:
        extra = {k: v for k, v in request.items() if k not in ("contact", "channel")}
        if "channel" in request:
            extra["providerChannelId"] = self.channels[request["channel"]]
        return body(self.contacts[request["contact"]], self.template, **extra)

    def _close(self, conversation_id: str) -> None:
        with self.world.engine.begin() as conn:
            found = lifecycle.find(conn, self.world.workspace_id, UUID(conversation_id), lock=True)
            assert found is not None
            lifecycle.close(conn, found)

    def seen(self, outcome: Outcome) -> tuple[Any, ...]:
        """The outcome with every id replaced by its (channel, contact) or shape index."""
        if outcome.status == "failed":
            assert outcome.error is not None
            blocking = outcome.error.get("blockingConversationIds", [])
            return ("failed", outcome.error["code"], [self._where(i) for i in blocking])
        assert outcome.result is not None
        conversation = outcome.result["conversation"]
        return (
            "succeeded",
            self.channels.index(UUID(conversation["channelId"])),
            self.contacts.index(UUID(conversation["contactId"])),
            outcome.result["alreadyInitiated"],
            outcome.result["followUpsCount"],
        )

    def _where(self, conversation_id: str) -> tuple[int, int]:
        with self.world.engine.connect() as conn:
            row = conn.execute(
                select(conversations.c.channel_id, conversations.c.contact_id).where(
                    conversations.c.id == UUID(conversation_id)
                )
            ).one()
        return self.channels.index(row.channel_id), self.contacts.index(row.contact_id)


def count(engine: Engine, table: Any, where: Any = True) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(where)).scalar_one())


def opened_counter(engine: Engine) -> dict[UUID, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(channel_openings.c.channel_id, func.sum(channel_openings.c.n)).group_by(
                channel_openings.c.channel_id
            )
        ).all()
    return {channel_id: int(n) for channel_id, n in rows}


def opened_rows(engine: Engine) -> dict[UUID, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(conversations.c.channel_id, func.count()).group_by(conversations.c.channel_id)
        ).all()
    return {channel_id: int(n) for channel_id, n in rows}


class TestAChunkAnswersAsSinglesWould:
    """Random worlds (sticky history, priorities, small daily limits, explicit channels,
    forceSend, opted-out and unknown contacts, a contact asked for several times): the
    chunk's outcomes, in order, are those of the same commands sent one by one."""

    @pytest.mark.parametrize("seed", range(8))
    def test_same_outcomes_in_the_same_order(self, engine: Engine, redis: Redis, seed: int):
        shape = Shape.draw(seed)
        one_by_one = Built(World(engine, redis, name="Singles"), shape)
        chunked = Built(World(engine, redis, name="Chunk"), shape)

        singles = [
            handlers.initiate_outbound(command, one_by_one.world.deps)
            for command in one_by_one.commands
        ]
        chunk = handlers.initiate_chunk(chunked.commands, chunked.world.deps)

        assert [o.command_id for o in chunk] == [c.command_id for c in chunked.commands]
        assert [chunked.seen(o) for o in chunk] == [one_by_one.seen(o) for o in singles]
        assert len({o.event_ids[0] for o in chunk}) == len(chunk)
        assert opened_counter(engine) == opened_rows(engine)


class TestQuotaInAChunk:
    def test_each_channel_opens_exactly_its_daily_limit(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        agent, template = world.agent(), world.template()
        channels = [world.channel(agent, dailyLimit=3) for _ in range(4)]
        chunk = [
            world.command(**body(world.contact(phone=f"+52155{i:08d}"), template))
            for i in range(15)
        ]

        outcomes = handlers.initiate_chunk(chunk, world.deps)

        codes = Counter(o.error["code"] if o.error else "created" for o in outcomes)
        assert codes == {"created": 12, "ChannelDailyLimitReached": 3}
        assert [o.status for o in outcomes[:12]] == ["succeeded"] * 12
        assert opened_rows(engine) == dict.fromkeys(channels, 3)
        assert opened_counter(engine) == dict.fromkeys(channels, 3)

    def test_two_chunks_at_once_never_pass_the_limit(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        agent, template = world.agent(), world.template()
        channels = [world.channel(agent, dailyLimit=30) for _ in range(2)]
        chunks = [
            [
                world.command(**body(world.contact(phone=f"+5215{n}{i:07d}"), template))
                for i in range(40)
            ]
            for n in (1, 2)
        ]
        results = run_at_once([lambda c=c: handlers.initiate_chunk(c, world.deps) for c in chunks])

        codes = Counter(o.error["code"] if o.error else "created" for r in results for o in r)
        assert codes == {"created": 60, "ChannelDailyLimitReached": 20}
        assert opened_rows(engine) == dict.fromkeys(channels, 30)
        assert opened_counter(engine) == dict.fromkeys(channels, 30)


class TestOneContactInTwoChunksAtOnce:
    def test_one_conversation_and_one_clean_rejection_each(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        world.channel(world.agent())
        template = world.template()
        contacts = [world.contact(phone=f"+52155{i:08d}") for i in range(30)]
        chunks = [[world.command(**body(c, template)) for c in contacts] for _ in range(2)]
        results = run_at_once([lambda c=c: handlers.initiate_chunk(c, world.deps) for c in chunks])

        for first, second in zip(*results, strict=True):
            assert sorted([first.status, second.status]) == ["failed", "succeeded"]
            loser = first if first.status == "failed" else second
            assert loser.error["code"] == "AllProviderChannelsOccupied"
        assert count(engine, conversations) == 30
        assert count(engine, outbox) == 60


class TestARedeliveredChunk:
    def test_gives_the_same_outcomes_and_writes_nothing(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        world.channel(world.agent())
        template = world.template()
        chunk = [
            world.command(
                **body(
                    world.contact(opted_out=i == 3, phone=f"+52155{i:08d}"),
                    template,
                    additionalMessages=[{"type": "text", "text": "hola"}],
                )
            )
            for i in range(6)
        ]
        first = handlers.initiate_chunk(chunk, world.deps)

        again = handlers.initiate_chunk(chunk, world.deps)

        assert [(o.status, o.result, o.error) for o in again] == [
            (o.status, o.result, o.error) for o in first
        ]
        assert all(o.event_ids == () for o in again)
        assert (count(engine, conversations), count(engine, messages)) == (5, 5)
        assert (count(engine, follow_ups), count(engine, outbox)) == (5, 6)


def _statement(sql: str) -> str:
    """``VERB table`` of a statement: the first table after INTO, FROM, UPDATE or JOIN (an
    id list's ``unnest`` and a ``LATERAL`` are not tables)."""
    verb = sql.split(None, 1)[0]
    names = re.findall(r"(?:INTO|FROM|UPDATE|JOIN)\s+\"?(\w+)", sql)
    tables = [name for name in names if name not in ("unnest", "LATERAL")]
    return f"{verb} {tables[0] if tables else ''}".strip()


class TestStatementsOfOneInitiation:
    """A single initiation costs a handful of statements, not thirty-one (issue 7): what
    the worker's handler sends for a fresh conversation on a one-channel workspace."""

    def test_a_fresh_conversation(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        world.channel(world.agent())
        template = world.template()
        # The first initiation of the workspace reads its catalog; the process keeps it.
        world.initiate(**body(world.contact(phone="+5215500000001"), template))
        command = world.command(**body(world.contact(), template))
        statements: list[str] = []

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(_statement(statement))

        event.listen(engine, "before_cursor_execute", seen)
        try:
            outcomes = handlers.initiate_single(command, world.deps)
        finally:
            event.remove(engine, "before_cursor_execute", seen)

        assert [outcome.status for outcome in outcomes] == ["succeeded"]
        assert statements == [
            "UPDATE commands",  # processing
            "WITH commands",  # the queue's backlog to take along: none
            "SELECT workspaces",  # the catalog's version, with the contacts
            "SELECT",  # now(), the conversations' creation time (one channel: no draft)
            "INSERT channel_fences",  # the lock's token
            "SELECT commands",  # claim, under the lock
            "SELECT conversations",  # the contact's
            "SELECT channel_openings",  # quota
            "SELECT channel_fences",  # fence check
            "INSERT conversations",  # a few rows: no COPY
            "INSERT channel_openings",
            "INSERT messages",
            "INSERT outbox_writes",  # the write the relay or the fast path marks published
            "INSERT outbox",
            "UPDATE commands",  # outcome
        ]


def commands_counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("leadscout_commands_total", {"outcome": outcome}) or 0.0


class TestMetricsOfAChunk:
    """``leadscout_commands_total`` counts each command once, by its outcome (SPEC 4.6)."""

    def test_created_reused_and_rejected_are_counted(self, engine: Engine, redis: Redis):
        world = World(engine, redis)
        channel = world.channel(world.agent())
        template, known = world.template(), world.contact()
        world.initiate(**body(known, template, providerChannelId=channel))
        chunk = [
            world.command(**body(world.contact(phone=f"+52155{i:08d}"), template)) for i in range(3)
        ]
        chunk.append(world.command(**body(known, template, forceSend=True)))
        chunk += [world.command(**body(uuid4(), template)) for _ in range(2)]
        before = {o: commands_counted(o) for o in ("created", "reused", "ContactNotFound")}

        handlers.initiate_chunk(chunk, world.deps)

        after = {o: commands_counted(o) for o in before}
        assert {o: after[o] - before[o] for o in before} == {
            "created": 3,
            "reused": 1,
            "ContactNotFound": 2,
        }


class TestAChunkOfTwoWorkspaces:
    def test_each_command_is_answered_in_its_own_workspace(self, engine: Engine, redis: Redis):
        worlds = [World(engine, redis, name=name) for name in ("Acme", "Other")]
        templates = []
        for world in worlds:
            world.channel(world.agent())
            templates.append(world.template())
        chunk = [
            worlds[i % 2].command(
                **body(worlds[i % 2].contact(phone=f"+52155{i:08d}"), templates[i % 2])
            )
            for i in range(6)
        ]

        outcomes = handlers.initiate_chunk(chunk, worlds[0].deps)

        assert [o.command_id for o in outcomes] == [c.command_id for c in chunk]
        assert [o.status for o in outcomes] == ["succeeded"] * 6
        assert [o.result["conversation"]["workspaceId"] for o in outcomes] == [
            str(worlds[i % 2].workspace_id) for i in range(6)
        ]
