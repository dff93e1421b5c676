"""The command sweeper (SPEC 5.2): unfinished commands nobody touched for
LEADSCOUT_SWEEP_AFTER_S go to the broker again, once per window, whoever sweeps."""

from __future__ import annotations

import base64
import itertools
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from prometheus_client import REGISTRY
from redis import Redis
from sqlalchemy import Engine, event, func, select, text, update

from schemas.commands import InitiateOutbound
from tests.concurrency import run_at_once
from tests.integration.test_interleavings import Gate
from tests.processes import running, service_env, wait_until
from tests.world import World, body
from worker import sweeper, tasks
from worker.celery_app import use_broker
from worker.store import batches
from worker.store.batches import NewBatch
from worker.store.tables import commands, conversations, outbox

AFTER_S = 30.0
CAMPAIGN_QUEUE, SINGLE_QUEUE = tasks.CAMPAIGN_QUEUE, tasks.SINGLE_QUEUE


@pytest.fixture
def world(engine: Engine, redis: Redis, redis_url: str) -> World:
    use_broker(redis_url)
    return World(engine, redis)


def queued(redis: Redis, queue: str) -> list[tuple[str, Any]]:
    """(task name, its one argument) of each message on a Celery queue, oldest first."""
    messages = [json.loads(raw) for raw in reversed(redis.lrange(queue, 0, -1))]
    return [
        (message["headers"]["task"], json.loads(base64.b64decode(message["body"]))[0][0])
        for message in messages
    ]


def age(engine: Engine, ids: Sequence[UUID], created_s: float, touched_s: float) -> None:
    """Moves the commands' creation and last touch that many seconds into the past."""
    with engine.begin() as conn:
        conn.execute(
            update(commands)
            .where(commands.c.id.in_(ids))
            .values(
                created_at=func.now() - text(f"interval '{created_s} seconds'"),
                updated_at=func.now() - text(f"interval '{touched_s} seconds'"),
            )
        )


def set_status(engine: Engine, ids: Sequence[UUID], status: str) -> None:
    with engine.begin() as conn:
        conn.execute(update(commands).where(commands.c.id.in_(ids)).values(status=status))


def touched(engine: Engine, ids: Sequence[UUID]) -> dict[UUID, Any]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(commands.c.id, commands.c.updated_at).where(commands.c.id.in_(ids))
        )
        return dict(rows.all())


def single(world: World) -> InitiateOutbound:
    return world.command(**body(uuid4(), uuid4()))


def record_batch(world: World, size: int) -> list[UUID]:
    """A batch of ``size`` recorded commands (never published), in item order."""
    batch = NewBatch(
        id=uuid4(),
        workspace_id=world.workspace_id,
        campaign_id="spring",
        commands=[
            InitiateOutbound.model_validate(
                {
                    "commandId": str(uuid4()),
                    "workspaceId": str(world.workspace_id),
                    "request": body(uuid4(), uuid4(), campaignId="spring"),
                }
            )
            for _ in range(size)
        ],
        invalid=[],
        request_hash="h",
    )
    with world.engine.begin() as conn:
        assert batches.record(conn, batch, None) is None
    return [command.command_id for command in batch.commands]


def swept_total() -> float:
    return REGISTRY.get_sample_value("leadscout_commands_swept_total") or 0.0


class TestWhatIsSwept:
    def test_a_single_command_untouched_past_the_delay_goes_to_the_single_queue_as_sent(
        self, world, engine, redis
    ):
        command = single(world)
        age(engine, [command.command_id], created_s=60, touched_s=60)
        before = swept_total()

        assert sweeper.sweep(engine, redis, AFTER_S) == 1

        assert queued(redis, SINGLE_QUEUE) == [
            ("leadscout.initiate_outbound", command.to_message())
        ]
        assert queued(redis, CAMPAIGN_QUEUE) == []
        assert swept_total() - before == 1

    def test_a_fresh_command_is_not_touched(self, world, engine, redis):
        command = single(world)
        before = touched(engine, [command.command_id])

        assert sweeper.sweep(engine, redis, AFTER_S) == 0

        assert touched(engine, [command.command_id]) == before
        assert (redis.llen(SINGLE_QUEUE), redis.llen(CAMPAIGN_QUEUE)) == (0, 0)

    def test_processing_is_swept_only_when_untouched_past_the_delay(self, world, engine, redis):
        """An old command a worker marked processing a moment ago has a live holder; one
        marked long ago lost it (a killed worker)."""
        live, lost = single(world), single(world)
        set_status(engine, [live.command_id, lost.command_id], "processing")
        age(engine, [live.command_id], created_s=120, touched_s=1)
        age(engine, [lost.command_id], created_s=120, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 1

        assert queued(redis, SINGLE_QUEUE) == [("leadscout.initiate_outbound", lost.to_message())]

    def test_finished_commands_are_never_swept(self, world, engine, redis):
        done = [single(world), single(world)]
        with engine.begin() as conn:
            for command, status in zip(done, ("succeeded", "failed"), strict=True):
                outcome = {"result": {"x": 1}} if status == "succeeded" else {"error": {"x": 1}}
                conn.execute(
                    update(commands)
                    .where(commands.c.id == command.command_id)
                    .values(status=status, **outcome)
                )
        age(engine, [c.command_id for c in done], created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 0

    def test_a_swept_command_is_swept_again_only_when_lost_again_and_another_delay_passed(
        self, world, engine, redis
    ):
        command = single(world)
        age(engine, [command.command_id], created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 1
        assert sweeper.sweep(engine, redis, AFTER_S) == 0  # touched just now
        age(engine, [command.command_id], created_s=60, touched_s=31)
        assert sweeper.sweep(engine, redis, AFTER_S) == 0  # its message still waits
        redis.delete(SINGLE_QUEUE)  # lost again (a Redis restart)
        assert sweeper.sweep(engine, redis, AFTER_S) == 1

        assert redis.llen(SINGLE_QUEUE) == 1

    def test_a_stored_command_no_worker_could_read_is_logged_and_the_others_still_go(
        self, world, engine, redis
    ):
        broken, fine = single(world), single(world)
        with engine.begin() as conn:
            conn.execute(
                update(commands)
                .where(commands.c.id == broken.command_id)
                .values(payload={"request": "not a request"})
            )
        age(engine, [broken.command_id, fine.command_id], created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 2

        assert queued(redis, SINGLE_QUEUE) == [("leadscout.initiate_outbound", fine.to_message())]

    def test_4500_stale_batch_commands_go_out_as_3_chunk_tasks_on_the_campaign_queue(
        self, world, engine, redis
    ):
        ids = record_batch(world, 4500)
        age(engine, ids, created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 4500

        sent = queued(redis, CAMPAIGN_QUEUE)
        assert [(name, len(chunk)) for name, chunk in sent] == [
            ("leadscout.initiate_chunk", 2000),
            ("leadscout.initiate_chunk", 2000),
            ("leadscout.initiate_chunk", 500),
        ]
        assert Counter(i for _, chunk in sent for i in chunk) == Counter(str(i) for i in ids)
        assert redis.llen(SINGLE_QUEUE) == 0

    def test_chunks_never_mix_batches_and_the_limit_takes_the_oldest_first(
        self, world, engine, redis
    ):
        older, newer = record_batch(world, 3), record_batch(world, 2)
        age(engine, older, created_s=90, touched_s=90)
        age(engine, newer, created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S, limit=4) == 4
        assert sweeper.sweep(engine, redis, AFTER_S, limit=4) == 1

        chunks = [set(chunk) for _, chunk in queued(redis, CAMPAIGN_QUEUE)]
        assert len(chunks) == 3
        assert chunks[0] == {str(i) for i in older}
        assert chunks[1] | chunks[2] == {str(i) for i in newer}


class TestBehindABacklog:
    """An accepted command whose message still waits in its queue is not published again,
    however long it waits; one published before the oldest waiting message is."""

    def test_a_queued_batch_is_left_alone_until_its_messages_are_lost(self, world, engine, redis):
        ids = record_batch(world, 1200)
        for start in range(0, 1200, tasks.CHUNK_SIZE):
            tasks.publish_chunk(ids[start : start + tasks.CHUNK_SIZE])
        age(engine, ids, created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 0
        redis.delete(CAMPAIGN_QUEUE)
        assert sweeper.sweep(engine, redis, AFTER_S) == 1200

    def test_a_lost_command_is_swept_while_a_later_one_waits_in_the_queue(
        self, world, engine, redis
    ):
        """With a margin of half the sweep delay (15 s): requests recorded together may
        publish in another order."""
        lost, just_before, waiting, later_lost = (single(world) for _ in range(4))
        tasks.publish(waiting)
        age(engine, [lost.command_id], created_s=90, touched_s=90)
        age(engine, [just_before.command_id], created_s=70, touched_s=70)
        age(engine, [waiting.command_id], created_s=60, touched_s=60)
        age(engine, [later_lost.command_id], created_s=45, touched_s=45)

        assert sweeper.sweep(engine, redis, AFTER_S) == 1

        assert queued(redis, SINGLE_QUEUE) == [
            ("leadscout.initiate_outbound", waiting.to_message()),
            ("leadscout.initiate_outbound", lost.to_message()),
        ]

    def test_the_rest_of_a_batch_follows_its_swept_part_at_once(self, world, engine, redis):
        """A pass takes 4 of 6 lost commands of one batch; the next pass takes the other
        2 although the first 4 now wait in the queue: they were published after them."""
        ids = record_batch(world, 6)
        age(engine, ids, created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S, limit=4) == 4
        assert sweeper.sweep(engine, redis, AFTER_S, limit=4) == 2

    def test_a_chunk_waiting_on_the_campaign_queue_does_not_hold_back_single_commands(
        self, world, engine, redis
    ):
        ids = record_batch(world, 3)
        tasks.publish_chunk(ids)
        lone = single(world)
        age(engine, [*ids, lone.command_id], created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 1

        assert queued(redis, SINGLE_QUEUE) == [("leadscout.initiate_outbound", lone.to_message())]

    @pytest.mark.parametrize(
        "raw",
        [b"not json", b'{"body": "e30=", "properties": {"body_encoding": "base64"}}', b"{}"],
    )
    def test_an_unreadable_message_at_the_head_holds_nothing_back(self, world, engine, redis, raw):
        lone = single(world)
        redis.lpush(SINGLE_QUEUE, raw)
        age(engine, [lone.command_id], created_s=60, touched_s=60)

        assert sweeper.sweep(engine, redis, AFTER_S) == 1


class TestSeveralSweepers:
    def test_two_sweepers_at_once_publish_each_stale_command_once(
        self, world, engine, redis, monkeypatch
    ):
        """The first sweeper stops while it publishes, holding its rows; the second one
        skips them and takes the rest; a third pass finds nothing left."""
        ids = record_batch(world, 300)
        age(engine, ids, created_s=60, touched_s=60)
        gate, publish = Gate(), sweeper.publish
        published: list[list[str]] = []

        def stopping_publish(stale):
            published.append([str(command.id) for command in stale])
            if len(published) == 1:
                gate.stop_here()
            return publish(stale)

        monkeypatch.setattr(sweeper, "publish", stopping_publish)

        def first() -> int:
            return sweeper.sweep(engine, redis, AFTER_S, limit=200)

        def second() -> int:
            gate.wait_reached()
            try:
                return sweeper.sweep(engine, redis, AFTER_S, limit=200)
            finally:
                gate.open()

        assert run_at_once([first, second]) == [200, 100]
        assert sweeper.sweep(engine, redis, AFTER_S) == 0

        on_queue = [i for _, chunk in queued(redis, CAMPAIGN_QUEUE) for i in chunk]
        assert Counter(on_queue) == Counter(str(i) for i in ids)
        assert sorted(i for batch in published for i in batch) == sorted(on_queue)

    def test_many_sweepers_racing_publish_each_command_once(self, world, engine, redis):
        ids = record_batch(world, 600)
        singles = [single(world).command_id for _ in range(20)]
        age(engine, [*ids, *singles], created_s=60, touched_s=60)

        counts = run_at_once([lambda: sweeper.sweep(engine, redis, AFTER_S, limit=150)] * 6)
        # A sweeper that read the queue's oldest message while another had published it but
        # not yet committed compared with that message's old touch time, and leaves some
        # commands to its next passes (seen in CI: 602, then 302 of 620). They take them.
        late = []
        while taken := sweeper.sweep(engine, redis, AFTER_S, limit=150):
            late.append(taken)

        assert sum(counts) + sum(late) == 620
        on_queue = [i for _, chunk in queued(redis, CAMPAIGN_QUEUE) for i in chunk]
        on_queue += [message["commandId"] for _, message in queued(redis, SINGLE_QUEUE)]
        assert Counter(on_queue) == Counter(str(i) for i in [*ids, *singles])


class TestDuplicatePublish:
    """A second delivery of a finished command costs one claim and changes nothing."""

    @pytest.fixture
    def deps(self, world, monkeypatch):
        monkeypatch.setattr(tasks, "handler_deps", lambda: world.deps)
        monkeypatch.setattr(tasks, "redis_client", lambda: world.redis)
        return world.deps

    def test_a_finished_single_command_delivered_again(self, world, engine, deps):
        channel = world.channel(world.agent())
        command = world.command(
            **body(world.contact(), world.template(), providerChannelId=channel)
        )
        tasks.initiate_outbound.apply(args=[command.to_message()]).get()
        first = rows_of(engine, command.command_id)

        statements = run_counting(
            engine, lambda: tasks.initiate_outbound.apply(args=[command.to_message()]).get()
        )

        assert rows_of(engine, command.command_id) == first
        assert first["status"] == "succeeded"
        assert (first["outbox"], first["conversations"]) == (1, 1)
        # Its own claim, then the look for a backlog to take along (none).
        assert statements == ["UPDATE commands", "WITH commands"]

    def test_a_finished_chunk_delivered_again(self, world, engine, deps):
        channel = world.channel(world.agent())
        template = world.template()
        chunk = [
            world.command(
                **body(world.contact(phone=f"+52155{n:08d}"), template, providerChannelId=channel)
            )
            for n in range(5)
        ]
        ids = [str(command.command_id) for command in chunk]
        tasks.initiate_chunk.apply(args=[ids]).get()
        first = [rows_of(engine, command.command_id) for command in chunk]

        statements = run_counting(engine, lambda: tasks.initiate_chunk.apply(args=[ids]).get())

        assert [rows_of(engine, command.command_id) for command in chunk] == first
        assert [row["status"] for row in first] == ["succeeded"] * 5
        assert [(row["outbox"], row["conversations"]) for row in first] == [(1, 1)] * 5
        # One statement reads the chunk back, and writes nothing: every command has its outcome.
        assert statements == ["SELECT commands"]


def rows_of(engine: Engine, command_id: UUID) -> dict[str, Any]:
    """The command's status, result and error, and how many rows its processing wrote."""
    with engine.connect() as conn:
        row = conn.execute(
            select(commands.c.status, commands.c.result, commands.c.error).where(
                commands.c.id == command_id
            )
        ).one()
        written = {
            name: conn.execute(
                select(func.count()).select_from(table).where(table.c.command_id == command_id)
            ).scalar_one()
            for name, table in (("outbox", outbox), ("conversations", conversations))
        }
    return {"status": row.status, "result": row.result, "error": row.error, **written}


def run_counting(engine: Engine, job: Any) -> list[str]:
    """The job's statements, as verb + first table."""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        words = statement.split()
        table = next(
            (w for prev, w in itertools.pairwise(words) if prev in ("FROM", "UPDATE", "INTO")), ""
        )
        statements.append(f"{words[0]} {table}".strip())

    event.listen(engine, "before_cursor_execute", seen)
    try:
        job()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return statements


@pytest.fixture
def relay_and_worker(
    database_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Path, Path]]:
    """``leadscout relay`` sweeping after 1 s, and a worker for both queues."""
    env = service_env(database_url, redis_url, LEADSCOUT_SWEEP_AFTER_S="1")
    logs = tmp_path / "relay.log", tmp_path / "worker.log"
    with (
        running(["relay"], env, logs[0]) as relay,
        running(["worker", "--pool", "threads", "--concurrency", "2"], env, logs[1]) as worker,
    ):
        yield logs
        assert relay.poll() is None, logs[0].read_text()[-3000:]
        assert worker.poll() is None, logs[1].read_text()[-3000:]


def statuses(engine: Engine, ids: Sequence[UUID]) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(
            conn.execute(select(commands.c.status).where(commands.c.id.in_(ids))).scalars()
        )


@pytest.mark.slow  # two processes to start and stop; tests/faults runs this path at volume
class TestTheRelaySweeps:
    def test_commands_recorded_and_never_published_are_finished_by_a_real_worker(
        self, world, engine, relay_and_worker
    ):
        """Recorded as the intake would, but no message ever left: the relay's sweeper
        publishes them and the worker finishes them, the single one and the batch's."""
        channel = world.channel(world.agent())
        template, contact = world.template(), world.contact()
        lone = world.command(**body(contact, template, providerChannelId=channel)).command_id
        batch = record_batch(world, 600)  # unknown templates and contacts: rejections
        ids = [lone, *batch]

        wait_until(
            lambda: statuses(engine, ids) == {"succeeded": 1, "failed": 600}, 60, "601 finished"
        )

        relay_log = relay_and_worker[0].read_text()
        swept = [
            json.loads(line) for line in relay_log.splitlines() if "sweeper.republished" in line
        ]
        assert sum(line["commands"] for line in swept) >= 601
        assert rows_of(engine, lone)["outbox"] == 1
