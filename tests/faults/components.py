"""What scenarios 4–6 (``test_components.py``) add to the harness: a process group paused
and resumed, a table lock that makes a component stop at an exact point, the stream's
entries per event, the reporter group's pending entries, and the processes' JSON logs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from redis import Redis
from sqlalchemy import Engine, text

from tests.faults.harness import FaultStack


def start_named(stack: FaultStack, *names: str) -> None:
    """Starts the processes with ``PGAPPNAME`` set to each one's name (libpq reads it): in
    ``pg_stat_activity`` their sessions show which process they belong to."""
    try:
        for name in names:
            stack.env["PGAPPNAME"] = name
            stack.start(name, wait=False)
    finally:
        stack.env.pop("PGAPPNAME", None)
    stack.wait_ready(*names)


def waiting_on_lock(engine: Engine, process: str, statement: str) -> bool:
    """Whether a session of ``process`` waits on a lock in a statement that starts as
    ``statement`` (a LIKE pattern)."""
    return bool(
        scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :process"
            " AND wait_event_type = 'Lock' AND query LIKE :statement",
            process=process,
            statement=statement,
        )
    )


@contextmanager
def paused(stack: FaultStack, name: str) -> Iterator[None]:
    """SIGSTOP to the process's whole group (the worker and its pool children), SIGCONT
    on leaving, whatever happened in between."""
    group = stack.processes[name].pid
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


@contextmanager
def waiting_commands_locked(engine: Engine, workspace_id: UUID) -> Iterator[int]:
    """Row-locks the workspace's commands still waiting (``FOR UPDATE SKIP LOCKED``: a
    round that claimed its own writes on) in a transaction of the test's own, rolled back
    on leaving; yields how many. The next round's claim, its first statement under the
    channel locks, waits right there, before its fences are checked."""
    with engine.connect() as conn, conn.begin() as transaction:
        locked = conn.execute(
            text(
                "SELECT id FROM commands WHERE workspace_id = :workspace_id"
                " AND status = 'accepted' FOR UPDATE SKIP LOCKED"
            ),
            {"workspace_id": workspace_id},
        ).all()
        yield len(locked)
        transaction.rollback()


class TableLock:
    """``LOCK TABLE table IN mode MODE`` held in a transaction of the test's own while the
    block runs (rolled back after): a component whose next statement conflicts waits
    right there, at a known point."""

    def __init__(self, engine: Engine, table: str, mode: str) -> None:
        self.engine, self.statement = engine, text(f"LOCK TABLE {table} IN {mode} MODE")

    def __enter__(self) -> TableLock:
        self._conn = self.engine.connect()
        self._take()
        return self

    def __exit__(self, *exc: object) -> None:
        self._transaction.rollback()
        self._conn.close()

    def _take(self) -> None:
        self._transaction = self._conn.begin()
        self._conn.execute(self.statement)

    def let_one_through(self) -> None:
        """Releases the lock and asks for it again at once: the session waiting on it gets
        it, and this returns once that session's transaction ended; its next conflicting
        statement waits behind this request (PostgreSQL queues lock requests in order)."""
        self._transaction.rollback()
        self._take()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls every 50 ms; returns the seconds it took, fails with ``what`` on time-out."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"gave up after {timeout_s}s: {what}"
        time.sleep(0.05)
    return time.monotonic() - started


def scalar(engine: Engine, sql: str, **params: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def unpublished(engine: Engine, workspace_id: UUID) -> int:
    return scalar(
        engine,
        "SELECT count(*) FROM outbox JOIN outbox_writes w ON w.id = outbox.write_id"
        " WHERE outbox.workspace_id = :w AND w.published_at IS NULL",
        w=workspace_id,
    )


def entries_per_event(redis: Redis, stream: str) -> Counter[UUID]:
    """How many stream entries carry each event id."""
    return Counter(UUID(json.loads(fields[b"event"])["id"]) for _, fields in redis.xrange(stream))


def consumer_name(stack: FaultStack, name: str) -> str:
    """The reporter's consumer name (``worker.reporter.default_consumer``): host and pid."""
    return f"{socket.gethostname()}-{stack.processes[name].pid}"


def pending_by_consumer(redis: Redis, stream: str, group: str) -> dict[str, int]:
    return {
        consumer["name"].decode(): int(consumer["pending"])
        for consumer in redis.xinfo_consumers(stream, group)
    }


def log_records(stack: FaultStack, name: str) -> Iterator[dict[str, Any]]:
    """The process's JSON log lines (every start of that name), other lines skipped."""
    for line in stack.log(name).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def count_logged(stack: FaultStack, names: tuple[str, ...], event: str, **match: str) -> int:
    """Lines of ``event`` (with those field values) in the named processes' logs."""
    return sum(
        1
        for name in names
        for record in log_records(stack, name)
        if record.get("event") == event and all(record.get(k) == v for k, v in match.items())
    )


def sum_logged(stack: FaultStack, names: tuple[str, ...], event: str, field: str) -> int:
    """The sum of ``field`` over the lines of ``event`` in the named processes' logs."""
    return sum(
        int(record.get(field, 0))
        for name in names
        for record in log_records(stack, name)
        if record.get("event") == event
    )
