"""The command log's intake helpers, which the API calls in its own process."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine, insert, select, text, update

from schemas.commands import InitiateOutbound
from tests.world import World, body
from worker.store import commands
from worker.store.tables import batches
from worker.store.tables import commands as command_rows

KEY = "key-1"


def new_command(world: World) -> InitiateOutbound:
    """A command as the API builds it, not yet recorded; the catalog is not read here."""
    return InitiateOutbound.model_validate(
        {
            "commandId": str(uuid4()),
            "workspaceId": str(world.workspace_id),
            "request": body(uuid4(), uuid4()),
        }
    )


def record(engine: Engine, command: InitiateOutbound, key: str = KEY, hash_: str = "h1") -> Any:
    with engine.begin() as conn:
        return commands.record_idempotent(conn, command, key, hash_)


def keyed(engine: Engine) -> dict[UUID, tuple[str | None, str]]:
    """Every command's idempotency key and request hash."""
    query = select(command_rows.c.id, command_rows.c.idempotency_key, command_rows.c.request_hash)
    with engine.connect() as conn:
        return {id_: (key, hash_) for id_, key, hash_ in conn.execute(query)}


def age(engine: Engine, command: InitiateOutbound, interval: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(command_rows)
            .where(command_rows.c.id == command.command_id)
            .values(created_at=text(f"now() - interval '{interval}'"))
        )


class TestRecordIdempotent:
    """A key records its first command and answers that command to every later use for
    24 hours, within its workspace only."""

    def test_the_first_use_records_the_command_with_its_key_and_body_hash(self, engine, redis):
        world = World(engine, redis)
        first = new_command(world)
        assert record(engine, first) is None
        assert keyed(engine) == {first.command_id: (KEY, "h1")}

    def test_a_later_use_gets_the_holder_and_records_nothing(self, engine, redis):
        world = World(engine, redis)
        first, unkeyed = new_command(world), world.command(**body(uuid4(), uuid4()))
        record(engine, first)
        holder = record(engine, new_command(world), hash_="h2")
        assert (holder.id, holder.request_hash, holder.status) == (
            first.command_id,
            "h1",
            "accepted",
        )
        assert set(keyed(engine)) == {first.command_id, unkeyed.command_id}

    def test_the_same_key_in_another_workspace_is_free(self, engine, redis):
        record(engine, new_command(World(engine, redis)))
        elsewhere = new_command(World(engine, redis, name="Other"))
        assert record(engine, elsewhere) is None
        assert keyed(engine)[elsewhere.command_id] == (KEY, "h1")

    def test_a_key_older_than_24_hours_passes_to_the_new_command(self, engine, redis):
        world = World(engine, redis)
        old, other_old, new = new_command(world), new_command(world), new_command(world)
        record(engine, old)
        record(engine, other_old, key="key-2")
        age(engine, old, "25 hours")
        age(engine, other_old, "25 hours")
        assert record(engine, new, hash_="h2") is None
        assert keyed(engine) == {
            old.command_id: (None, "h1"),
            other_old.command_id: ("key-2", "h1"),
            new.command_id: (KEY, "h2"),
        }

    def test_a_key_younger_than_24_hours_stays_with_its_holder(self, engine, redis):
        world = World(engine, redis)
        old = new_command(world)
        record(engine, old)
        age(engine, old, "23 hours")
        assert record(engine, new_command(world)).id == old.command_id


def statuses(engine: Engine) -> dict[UUID, str]:
    with engine.connect() as conn:
        return {
            id_: status
            for id_, status in conn.execute(select(command_rows.c.id, command_rows.c.status))
        }


class TestDiscard:
    """Discarding the command the broker never got removes that command, and only while
    no worker has started it."""

    def test_removes_the_named_command_and_no_other(self, engine, redis):
        world = World(engine, redis)
        unsent, other = (
            world.command(**body(uuid4(), uuid4())),
            world.command(**body(uuid4(), uuid4())),
        )
        with engine.begin() as conn:
            commands.discard(conn, unsent.command_id)
        assert statuses(engine) == {other.command_id: "accepted"}

    def test_leaves_a_command_a_worker_has_started(self, engine, redis):
        world = World(engine, redis)
        started = world.command(**body(uuid4(), uuid4()))
        with engine.begin() as conn:
            commands.mark_processing(conn, [started.command_id])
            commands.discard(conn, started.command_id)
        assert statuses(engine) == {started.command_id: "processing"}


class TestRecord:
    """A command is recorded with the key, body hash and batch the API gives it."""

    def test_stores_what_it_is_given(self, engine, redis):
        world = World(engine, redis)
        command, batch_id = new_command(world), uuid4()
        with engine.begin() as conn:
            conn.execute(
                insert(batches).values(
                    id=batch_id, workspace_id=world.workspace_id, campaign_id="c", total=1
                )
            )
            commands.record(conn, command, idempotency_key="k", body_hash="h", batch_id=batch_id)
        query = select(
            command_rows.c.idempotency_key, command_rows.c.request_hash, command_rows.c.batch_id
        )
        with engine.connect() as conn:
            assert conn.execute(query).one() == ("k", "h", batch_id)


class TestMarkProcessing:
    """A worker's first touch moves that accepted command, and no other, to processing."""

    def test_only_the_named_command_moves_and_its_update_time_with_it(self, engine, redis):
        world = World(engine, redis)
        started, waiting = new_command(world), new_command(world)
        record(engine, started, key="a")
        record(engine, waiting, key="b")
        with engine.begin() as conn:
            assert commands.mark_processing(conn, [started.command_id]) == {}
        assert statuses(engine) == {
            started.command_id: "processing",
            waiting.command_id: "accepted",
        }
        query = select(command_rows.c.updated_at > command_rows.c.created_at).where(
            command_rows.c.id == started.command_id
        )
        with engine.connect() as conn:
            assert conn.execute(query).scalar_one() is True


class TestFind:
    """A command is found only through its own workspace."""

    def test_another_workspace_finds_nothing(self, engine, redis):
        owner, other = World(engine, redis), World(engine, redis, name="Other")
        command = owner.command(**body(uuid4(), uuid4()))
        with engine.connect() as conn:
            found = commands.find(conn, owner.workspace_id, command.command_id)
            assert (found.id, found.status) == (command.command_id, "accepted")
            assert commands.find(conn, other.workspace_id, command.command_id) is None
            assert commands.find(conn, owner.workspace_id, uuid4()) is None

    def test_many_in_one_statement_skip_the_unknown(self, engine, redis):
        world = World(engine, redis)
        done, waiting = (world.command(**body(uuid4(), uuid4())) for _ in range(2))
        result = {"conversation": {"id": "c"}}
        with engine.begin() as conn:
            commands.finish(conn, [commands.Outcome(done.command_id, "succeeded", result=result)])
        with engine.connect() as conn:
            found = commands.find_many(conn, [done.command_id, waiting.command_id, uuid4()])
        assert sorted((str(c.id), c.status, c.result, c.finished) for c in found) == sorted(
            [
                (str(done.command_id), "succeeded", result, True),
                (str(waiting.command_id), "accepted", None, False),
            ]
        )


class TestFinish:
    """Finishing stamps the outcome with the time it was reached."""

    def test_sets_completed_at_and_moves_updated_at(self, engine, redis):
        world = World(engine, redis)
        command = world.command(**body(uuid4(), uuid4()))
        with engine.begin() as conn:
            commands.finish(conn, [commands.Outcome(command.command_id, "succeeded", result={})])
        query = select(
            command_rows.c.status,
            command_rows.c.completed_at.is_not(None),
            command_rows.c.updated_at > command_rows.c.created_at,
        )
        with engine.connect() as conn:
            assert conn.execute(query).one() == ("succeeded", True, True)


class TestReadChunk:
    """A chunk task reads its commands back from their rows, in the order it names them,
    and leaves them accepted until their outcome."""

    def test_in_the_named_order_as_recorded_and_unknown_ids_skipped(self, engine, redis):
        world = World(engine, redis)
        first = world.command(**body(uuid4(), uuid4(), campaignId="spring"))
        second = world.command(**body(uuid4(), uuid4(), parameters=[], forceSend=True))
        with engine.begin() as conn:
            taken, finished = commands.read_chunk(
                conn, [second.command_id, uuid4(), first.command_id]
            )

        assert [c.to_message() for c in taken] == [second.to_message(), first.to_message()]
        assert finished == {}
        with engine.connect() as conn:
            statuses = conn.execute(select(command_rows.c.status)).scalars().all()
        assert statuses == ["accepted", "accepted"]

    def test_a_finished_command_comes_back_as_its_outcome_not_as_work(self, engine, redis):
        world = World(engine, redis)
        done, waiting = (world.command(**body(uuid4(), uuid4())) for _ in range(2))
        problem = {"code": "ContactNotFound", "status": 404}
        with engine.begin() as conn:
            commands.finish(conn, [commands.Outcome(done.command_id, "failed", error=problem)])
        with engine.begin() as conn:
            taken, finished = commands.read_chunk(conn, [done.command_id, waiting.command_id])

        assert [c.command_id for c in taken] == [waiting.command_id]
        assert finished == {
            done.command_id: commands.Outcome(done.command_id, "failed", error=problem)
        }


class TestFindAnswersTheOutcome:
    def test_a_finished_command_carries_its_result_and_error(self, engine, redis):
        world = World(engine, redis)
        won, lost = (world.command(**body(uuid4(), uuid4())) for _ in range(2))
        problem = {"code": "ContactNotFound", "status": 404}
        with engine.begin() as conn:
            commands.finish(
                conn,
                [
                    commands.Outcome(won.command_id, "succeeded", result={"commandId": "x"}),
                    commands.Outcome(lost.command_id, "failed", error=problem),
                ],
            )
        with engine.connect() as conn:
            found_won = commands.find(conn, world.workspace_id, won.command_id)
            found_lost = commands.find(conn, world.workspace_id, lost.command_id)

        assert (found_won.status, found_won.result, found_won.error) == (
            "succeeded",
            {"commandId": "x"},
            None,
        )
        assert (found_lost.status, found_lost.result, found_lost.error) == ("failed", None, problem)


class TestUnknownCommands:
    def test_marking_or_claiming_a_command_never_recorded_names_it(self, engine, redis):
        world = World(engine, redis)
        known, unknown = world.command(**body(uuid4(), uuid4())), uuid4()
        for touch in (commands.mark_processing, commands.claim):
            with engine.begin() as conn, pytest.raises(commands.UnknownCommand) as raised:
                touch(conn, [known.command_id, unknown])
            assert raised.value.args == (unknown,)
