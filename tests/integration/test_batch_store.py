"""The batch store (SPEC 4.3): one transaction, commands in bulk, counts, an idempotent key."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine, event, func, select, text, update

from schemas.commands import InitiateOutbound
from tests.integration.test_concurrency import run_at_once
from tests.integration.test_interleavings import Gate, engine_stopping
from tests.processes import wait_until
from tests.world import World, body
from worker.store import batches, bulk
from worker.store.batches import NewBatch, StoredBatch
from worker.store.tables import batches as batch_rows
from worker.store.tables import commands

KEY = "campaign-7"
INVALID = [{"index": 1, "errors": [{"loc": ["body", "items", 1, "contactId"], "msg": "Bad"}]}]


@pytest.fixture
def world(engine: Engine, redis) -> World:
    return World(engine, redis)


def new_batch(world: World, size: int = 3, body_hash: str = "h1") -> NewBatch:
    """A batch as the API sorts it; the catalog is not read here."""
    requests = [body(uuid4(), uuid4(), campaignId="spring") for _ in range(size)]
    return NewBatch(
        id=uuid4(),
        workspace_id=world.workspace_id,
        campaign_id="spring",
        commands=[
            InitiateOutbound.model_validate(
                {"commandId": str(uuid4()), "workspaceId": str(world.workspace_id), "request": r}
            )
            for r in requests
        ],
        invalid=INVALID,
        request_hash=body_hash,
    )


def record(engine: Engine, batch: NewBatch, key: str | None = KEY) -> StoredBatch | None:
    with engine.begin() as conn:
        return batches.record(conn, batch, key)


def stored_batches(engine: Engine) -> dict[UUID, tuple[Any, ...]]:
    """Every batch row: (total, key, hash, invalid)."""
    query = select(
        batch_rows.c.id,
        batch_rows.c.total,
        batch_rows.c.idempotency_key,
        batch_rows.c.request_hash,
        batch_rows.c.invalid,
    )
    with engine.connect() as conn:
        return {row.id: tuple(row[1:]) for row in conn.execute(query)}


def command_batches(engine: Engine) -> dict[UUID, UUID | None]:
    with engine.connect() as conn:
        return {
            row.id: row.batch_id for row in conn.execute(select(commands.c.id, commands.c.batch_id))
        }


def ids(batch: NewBatch) -> set[UUID]:
    return {command.command_id for command in batch.commands}


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    """The statements the engine executes, as the application issues them."""
    seen: list[str] = []

    def before(conn: Any, clause: Any, *args: Any) -> None:
        seen.append(str(clause))

    event.listen(engine, "before_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_execute", before)


class TestRecord:
    """The batch row and its commands go in one transaction, the commands in one statement."""

    def test_rows_are_the_batch_and_its_commands_with_the_batch_request_hash(self, engine, world):
        batch = new_batch(world)

        assert record(engine, batch, key=None) is None

        assert stored_batches(engine) == {batch.id: (3, None, "h1", INVALID)}
        with engine.connect() as conn:
            rows = conn.execute(
                select(commands).where(commands.c.batch_id == batch.id).order_by(commands.c.id)
            ).all()
        expected = sorted(batch.commands, key=lambda command: command.command_id)
        assert [
            (row.id, row.workspace_id, row.idempotency_key, row.status, row.payload) for row in rows
        ] == [
            (c.command_id, world.workspace_id, None, "accepted", c.to_message()) for c in expected
        ]
        # The request that made each command: the batch body (its hash is "h1" here).
        assert [row.request_hash for row in rows] == ["h1", "h1", "h1"]

    def test_twelve_hundred_commands_take_one_copy_and_no_insert(self, engine, world, monkeypatch):
        batch = new_batch(world, size=1200)
        copies: list[tuple[str, int]] = []
        copy_rows = bulk.copy_rows

        def counted(conn: Any, table: Any, columns: Any, rows: Any) -> int:
            count = copy_rows(conn, table, columns, rows)
            copies.append((table.name, count))  # psycopg's COPY goes around SQLAlchemy
            return count

        monkeypatch.setattr(bulk, "copy_rows", counted)
        with counting_statements(engine) as statements:
            record(engine, batch)

        assert copies == [("commands", 1200)]
        assert [s for s in statements if "INTO commands" in s] == []
        assert set(command_batches(engine)) == ids(batch)

    def test_a_batch_without_valid_items_is_recorded_with_its_invalid_ones(self, engine, world):
        batch = new_batch(world, size=0)

        assert record(engine, batch) is None

        assert stored_batches(engine) == {batch.id: (0, KEY, "h1", INVALID)}
        assert command_batches(engine) == {}

    def test_a_failure_inside_the_transaction_keeps_nothing(self, engine, world):
        batch = new_batch(world)
        duplicate = dataclasses.replace(batch, commands=[*batch.commands] * 2)

        with pytest.raises(Exception, match="pk_commands"):
            record(engine, duplicate)

        assert (stored_batches(engine), command_batches(engine)) == ({}, {})


def backdate(engine: Engine, batch: NewBatch, interval: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(batch_rows)
            .where(batch_rows.c.id == batch.id)
            .values(created_at=func.now() - text(f"interval '{interval}'"))
        )


class TestIdempotencyKey:
    """A key records its first batch and answers it to every later use for 24 hours, in its
    workspace only; the later uses record nothing."""

    def test_a_later_use_gets_the_holder_and_records_nothing(self, engine, world):
        first = new_batch(world)
        record(engine, first)

        holder = record(engine, new_batch(world, body_hash="h2"))

        assert holder == StoredBatch(first.id, "h1", 3, INVALID)
        assert set(stored_batches(engine)) == {first.id}
        assert set(command_batches(engine)) == ids(first)

    def test_the_same_key_in_another_workspace_is_free(self, engine, world):
        record(engine, new_batch(world))
        elsewhere = new_batch(World(engine, world.redis, name="Other"))

        assert record(engine, elsewhere) is None
        assert stored_batches(engine)[elsewhere.id][1] == KEY

    def test_a_key_older_than_24_hours_passes_to_the_new_batch(self, engine, world):
        old, new = new_batch(world), new_batch(world, body_hash="h2")
        record(engine, old)
        backdate(engine, old, "25 hours")

        assert record(engine, new) is None

        assert {batch_id: row[1:3] for batch_id, row in stored_batches(engine).items()} == {
            old.id: (None, "h1"),
            new.id: (KEY, "h2"),
        }
        assert set(command_batches(engine)) == ids(old) | ids(new)

    def test_a_key_younger_than_24_hours_stays_with_its_holder(self, engine, world):
        old = new_batch(world)
        record(engine, old)
        backdate(engine, old, "23 hours")

        assert record(engine, new_batch(world)).id == old.id

    def test_identical_calls_at_once_make_one_batch_and_one_set_of_commands(self, engine, world):
        """Eight threads released together: one records, the seven others get its batch."""
        twins = [new_batch(world, size=50) for _ in range(8)]

        answers = run_at_once([lambda b=b: record(engine, b) for b in twins])

        [winner] = [b for b, a in zip(twins, answers, strict=True) if a is None]
        assert [a for a in answers if a is not None] == [
            StoredBatch(winner.id, "h1", 50, INVALID)
        ] * 7
        assert set(stored_batches(engine)) == {winner.id}
        assert set(command_batches(engine)) == ids(winner)

    def test_a_twin_waits_for_the_first_transaction_and_answers_its_batch(
        self, engine, world, database_url
    ):
        """The first stops inside its transaction, right after its batch row (its commands
        follow by COPY, which the gate cannot see); the twin blocks on the unique index
        until the first commits, then answers the first's batch."""
        first, twin = new_batch(world), new_batch(world)
        gate = Gate()
        answers: dict[str, StoredBatch | None] = {}

        def batch_written(sql: str) -> bool:
            return sql.startswith("INSERT INTO batches")

        with engine_stopping(database_url, gate, batch_written, after=True) as stopping:
            first_thread = threading.Thread(
                target=lambda: answers.setdefault("first", record(stopping, first))
            )
            first_thread.start()
            gate.wait_reached()
            twin_thread = threading.Thread(
                target=lambda: answers.setdefault("twin", record(engine, twin))
            )
            twin_thread.start()
            wait_until(lambda: waiting_on_a_lock(engine), 30, "the twin to wait on the index")
            gate.open()
            first_thread.join(30)
            twin_thread.join(30)

        assert answers == {"first": None, "twin": StoredBatch(first.id, "h1", 3, INVALID)}
        assert set(command_batches(engine)) == ids(first)


def waiting_on_a_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND query LIKE 'INSERT INTO batches%'"
                )
            ).scalar_one()
        )


def set_status(engine: Engine, command: InitiateOutbound, status: str, code: str = "") -> None:
    """Where a worker would leave the command (its outcome columns, as the table requires)."""
    values: dict[str, Any] = {"status": status}
    if status == "succeeded":
        values["result"] = {"ok": 1}
    if status == "failed":
        values.update(error={"code": code, "status": 404}, error_code=code)
    with engine.begin() as conn:
        conn.execute(update(commands).where(commands.c.id == command.command_id).values(**values))


class TestStatus:
    """Counts bucket the batch's commands by status and the failed ones by error code."""

    def test_counts_and_errors_are_exact(self, engine, world):
        batch = new_batch(world, size=7)
        record(engine, batch)
        first, second, third, fourth, fifth, sixth, _ = batch.commands
        set_status(engine, first, "processing")
        set_status(engine, second, "succeeded")
        set_status(engine, third, "failed", "ContactNotFound")
        set_status(engine, fourth, "failed", "ContactNotFound")
        set_status(engine, fifth, "failed", "ContactOptedOut")
        set_status(engine, sixth, "succeeded")

        with engine.connect() as conn:
            status = batches.status(conn, world.workspace_id, batch.id)

        assert status is not None
        assert status.model_dump(mode="json") == {
            "batchId": str(batch.id),
            "campaignId": "spring",
            "total": 7,
            "counts": {"accepted": 1, "processing": 1, "succeeded": 2, "failed": 3},
            "errors": {"ContactNotFound": 2, "ContactOptedOut": 1},
        }

    def test_another_workspace_or_an_unknown_id_finds_nothing(self, engine, world):
        batch = new_batch(world)
        record(engine, batch)
        other = World(engine, world.redis, name="Other")

        with engine.connect() as conn:
            found = [
                batches.status(conn, other.workspace_id, batch.id),
                batches.status(conn, world.workspace_id, uuid4()),
            ]

        assert found == [None, None]


class TestDiscard:
    """Discarding a batch the broker never got removes it, its commands and its key."""

    def test_removes_the_batch_and_its_commands_only(self, engine, world):
        kept, dropped = new_batch(world), new_batch(world)
        record(engine, kept, key=None)
        record(engine, dropped)

        with engine.begin() as conn:
            batches.discard(conn, dropped.id)

        assert set(stored_batches(engine)) == {kept.id}
        assert set(command_batches(engine)) == ids(kept)
        assert record(engine, new_batch(world)) is None
