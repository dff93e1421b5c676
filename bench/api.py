"""Benchmark: sync single initiations (SPEC 4.1/4.2) at steady rates, open loop.

    .venv/bin/python bench/api.py                          # 50, 100, 200, 400 req/s, 15 s each
    .venv/bin/python bench/api.py --steps 20,40 --step-seconds 3 --campaign-leads 2000

The service runs as real processes (api, worker, relay, reporter) on the servers of
bench/common.py. One workspace holds a contact per request of the run and one WhatsApp
channel (daily limit 1,000,000) with an active prospection agent; 50,000 closed conversations
opened on it over the last 23 h are seeded with SQL, with their hourly `channel_openings`.

The load generator is this one process: asyncio on raw keep-alive connections, every request
built before the clock starts, each sent at its scheduled time whatever the answers so far
(open loop), its latency measured from that time, so a stalled service shows in the
latencies instead of slowing the sender. Only the status line is read; the body is skipped.
Every request counts in p50/p99, errors included; a timeout counts as its timeout (a lower
bound). `ok/s` is 200 answers per second of the step.

Then (`--with-campaign`, the default) `--campaign-rate` (100 req/s) again while
`bench/fanout.py --api-url` runs a campaign of `--campaign-leads` in another workspace of the
same stack, in a process of its own, from the campaign's first event on. Last line:
`api: <rate>=<ok/s>/<p50 ms>/<p99 ms> ... with_campaign=<ok/s>/<p50 ms>/<p99 ms>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from bench.common import (  # noqa: E402
    BenchError,
    Catalog,
    Servers,
    Stack,
    Workspace,
    cpu_seconds,
    create_workspace,
    import_catalog,
    leadscout,
    machine_cpu_seconds,
    progress,
    servers,
    service_stack,
    stop_group,
)
from tests.processes import wait_until  # noqa: E402
from worker.store.db import make_engine  # noqa: E402

FANOUT = ROOT / "bench" / "fanout.py"
STREAM = "leadscout:events"
HISTORY = 50_000
TIMEOUT_S = 30.0
# uvicorn closes a keep-alive connection after 5 s idle: an older one is not reused.
IDLE_S = 4.0
# A step starts once the previous one's backlog (202s, queued events) is gone.
SETTLE_TIMEOUT_S = 600
# The campaign imports its contacts before its first event: minutes at 100,000 on 2 cores.
CAMPAIGN_START_TIMEOUT_S = 900


def main() -> None:
    args = _arguments()
    try:
        with tempfile.TemporaryDirectory(prefix="lsbench") as tmp:
            steps = _measure(args, Path(tmp))
    except (BenchError, TimeoutError) as exc:
        progress(f"api: {exc}")
        sys.exit(1)
    print("api: " + " ".join(step.summary() for step in steps))


def _measure(args: argparse.Namespace, folder: Path) -> list[Step]:
    plan = _plan(args)
    with servers() as urls:
        leadscout(urls, "migrate")
        workspace = create_workspace(urls, "bench api")
        progress(f"api: importing {plan.contacts} contacts, seeding {HISTORY} conversations")
        catalog = import_catalog(urls, workspace, folder, plan.contacts, [1_000_000])
        engine = make_engine(urls.database_url, pool_size=1)
        try:
            _seed_history(engine, workspace, catalog, HISTORY)
            with service_stack(urls, folder, args.workers, args.concurrency) as stack:
                requests = _requests(stack.api_url, workspace, catalog)
                return _run(args, plan, Bench(urls, stack, engine, folder), requests)
        finally:
            engine.dispose()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="50,100,200,400", help="rates in req/s")
    parser.add_argument("--step-seconds", type=float, default=15)
    parser.add_argument("--warmup-seconds", type=float, default=3)
    parser.add_argument("--with-campaign", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--campaign-rate", type=int, default=100, help="req/s beside it")
    parser.add_argument("--campaign-leads", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="`leadscout worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    return parser.parse_args()


@dataclass(frozen=True)
class Phase:
    name: str
    rate: int
    requests: int


@dataclass(frozen=True)
class Plan:
    """The phases in order (warm-up, the steps, beside the campaign), a contact per request."""

    phases: list[Phase]

    @property
    def contacts(self) -> int:
        return sum(phase.requests for phase in self.phases)


def _plan(args: argparse.Namespace) -> Plan:
    rates = [int(rate) for rate in args.steps.split(",")]
    phases = [Phase("warm-up", rates[0], int(rates[0] * args.warmup_seconds))]
    phases += [Phase(str(rate), rate, int(rate * args.step_seconds)) for rate in rates]
    if args.with_campaign:
        rate = args.campaign_rate
        phases.append(Phase("with_campaign", rate, int(rate * args.step_seconds)))
    return Plan(phases)


def _seed_history(engine: Engine, workspace: Workspace, catalog: Catalog, count: int) -> None:
    """``count`` closed conversations opened on the channel over the last 23 h, each with a
    contact of its own, and the hourly counters the daily quota reads."""
    ids = {
        "workspace": workspace.id,
        "channel": catalog.channel_ids[0],
        "agent": catalog.agent_ids[0],
        "count": count,
    }
    with engine.begin() as conn:
        conn.execute(
            text(
                "WITH seeded AS ("
                " INSERT INTO contacts (id, workspace_id, name, phone, email, opted_out)"
                " SELECT gen_random_uuid(), :workspace, 'History ' || g,"
                "  '+52166' || lpad(g::text, 8, '0'), NULL, false"
                " FROM generate_series(1, :count) AS g RETURNING id)"
                " INSERT INTO conversations (id, workspace_id, channel_id, contact_id, agent_id,"
                "  status, control, command_id, created_at, updated_at)"
                " SELECT gen_random_uuid(), :workspace, :channel, id, :agent, 'closed', 'ai',"
                "  gen_random_uuid(), opened, opened"
                " FROM (SELECT id, now() - interval '23 hours' * random() AS opened FROM seeded) s"
            ),
            ids,
        )
        conn.execute(
            text(
                "INSERT INTO channel_openings (channel_id, hour, n)"
                " SELECT channel_id, date_trunc('hour', created_at), count(*)"
                " FROM conversations WHERE channel_id = :channel GROUP BY 1, 2"
            ),
            ids,
        )
    # Committed: an ANALYZE rolled back with its transaction leaves no statistics, and the
    # planner then ANDs in a scan of all 50,000 conversations of the workspace.
    with engine.begin() as conn:
        conn.execute(text("ANALYZE contacts, conversations, channel_openings"))


def _requests(api_url: str, workspace: Workspace, catalog: Catalog) -> list[bytes]:
    """One raw HTTP/1.1 request per contact, in contact order."""
    head = (
        f"POST /v1/workspaces/{workspace.id}/leadscout/outbound HTTP/1.1\r\n"
        f"Host: {urlsplit(api_url).netloc}\r\n"
        f"X-API-Key: {workspace.api_key}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    template = {"templateId": catalog.template_id, "parameters": ["Lead"]}
    requests = []
    for contact_id in catalog.contact_ids:
        body = json.dumps({"contactId": contact_id, "template": template}).encode()
        requests.append(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return requests


@dataclass(frozen=True)
class Bench:
    """What the phases run against."""

    servers: Servers
    stack: Stack
    engine: Engine
    folder: Path


class Answer(NamedTuple):
    status: str  # the HTTP status code, or "timeout" / "error"
    latency: float  # seconds from the scheduled send time
    lag: float  # seconds this process was late to send it: the generator's own delay


def _percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Step:
    name: str
    answers: list[Answer]
    seconds: float  # as scheduled: requests / rate
    generator_cpu: float  # this process's CPU over the step, as a share of one core
    note: str = ""
    service_cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok_per_s(self) -> float:
        return sum(answer.status == "200" for answer in self.answers) / self.seconds

    def latency_ms(self, q: float) -> float:
        return _percentile_ms([answer.latency for answer in self.answers], q)

    def line(self) -> str:
        statuses = Counter(answer.status for answer in self.answers)
        errors = ",".join(f"{s}:{n}" for s, n in sorted(statuses.items()) if s != "200")
        return (
            f"api: step={self.name} sent={len(self.answers)} in={self.seconds:.0f}s"
            f" ok/s={self.ok_per_s:.1f} p50={self.latency_ms(0.5):.1f}ms"
            f" p99={self.latency_ms(0.99):.1f}ms errors={errors or 'none'}"
            f" generator_cpu={self.generator_cpu:.0%}"
            f" generator_lag_p99={_percentile_ms([a.lag for a in self.answers], 0.99):.1f}ms"
            + (
                " cpu_ms_per_request " + _format_ms(self.service_cpu_ms)
                if self.service_cpu_ms
                else ""
            )
            + self.note
        )

    def summary(self) -> str:
        return (
            f"{self.name}={self.ok_per_s:.1f}/{self.latency_ms(0.5):.0f}"
            f"/{self.latency_ms(0.99):.0f}"
        )


def _run(args: argparse.Namespace, plan: Plan, bench: Bench, requests: list[bytes]) -> list[Step]:
    steps = []
    start = 0
    for phase in plan.phases:
        mine = requests[start : start + phase.requests]
        start += phase.requests
        if phase.name == "with_campaign":
            step = _beside_campaign(args, bench, phase, mine)
        else:
            progress(f"api: {phase.name} at {phase.rate} req/s")
            pids = {name: process.pid for name, process in bench.stack.processes.items()}
            cpu_before, machine_before = cpu_seconds(pids), machine_cpu_seconds()
            step = _step(phase, mine, bench.stack)
            _wait_settled(bench.engine)
            step = replace(
                step,
                service_cpu_ms=_cpu_ms_per_request(pids, cpu_before, machine_before, len(mine)),
            )
        if phase.name != "warm-up":
            print(step.line(), flush=True)
            steps.append(step)
    return steps


def _cpu_ms_per_request(
    pids: dict[str, int], before: dict[str, float], machine_before: float, requests: int
) -> dict[str, float]:
    """CPU milliseconds per request of each service process (its pool included), from the
    step's start until every command finished; "rest" is the machine's other busy time
    (PostgreSQL, Redis, this generator, and whatever else runs)."""
    spent = {name: s - before.get(name, 0.0) for name, s in cpu_seconds(pids).items()}
    spent["rest"] = machine_cpu_seconds() - machine_before - sum(spent.values())
    return {name: 1000 * s / requests for name, s in spent.items()}


def _step(phase: Phase, requests: list[bytes], stack: Stack) -> Step:
    split = urlsplit(stack.api_url)
    address = (split.hostname or "127.0.0.1", split.port or 80)
    cpu_before, started = _cpu_seconds(), time.monotonic()
    answers = asyncio.run(_open_loop(address, requests, phase.rate))
    cpu_share = (_cpu_seconds() - cpu_before) / (time.monotonic() - started)
    stack.assert_alive()
    return Step(phase.name, answers, len(requests) / phase.rate, cpu_share)


def _format_ms(spent: dict[str, float]) -> str:
    return " ".join(f"{name}={ms:.2f}" for name, ms in spent.items())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wait_settled(engine: Engine) -> None:
    def settled() -> bool:
        with engine.connect() as conn:
            return not conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM commands"
                    "  WHERE status IN ('accepted', 'processing'))"
                    " OR EXISTS (SELECT 1 FROM outbox_writes WHERE published_at IS NULL)"
                )
            ).scalar_one()

    wait_until(settled, SETTLE_TIMEOUT_S, "every command finished and every event sent")


def _beside_campaign(
    args: argparse.Namespace, bench: Bench, phase: Phase, requests: list[bytes]
) -> Step:
    """The step again while bench/fanout.py runs a campaign in its own workspace on this
    stack, in a process of its own so that it takes nothing from this event loop."""
    command = [sys.executable, str(FANOUT), "--no-ceiling", "--leads", str(args.campaign_leads)]
    command += ["--api-url", bench.stack.api_url]
    log = bench.folder / "fanout.log"
    redis = Redis.from_url(bench.servers.redis_url)
    events_before = redis.xlen(STREAM)
    progress(f"api: starting a campaign of {args.campaign_leads} leads (log: {log})")
    with log.open("wb") as out:
        campaign = subprocess.Popen(
            command,
            env=bench.servers.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: _campaign_flowing(campaign, log, redis, events_before),
                CAMPAIGN_START_TIMEOUT_S,
                "the campaign's first event",
            )
            progress(f"api: {phase.name} at {phase.rate} req/s beside the campaign")
            step = _step(phase, requests, bench.stack)
            progress(f"api: single commands during the step: {_committed(bench.engine)}")
            if campaign.poll() is not None:
                step = replace(step, note=" (the campaign ended before the step did)")
        finally:
            stop_group(campaign, signal.SIGTERM)
            redis.close()
    return step


def _committed(engine: Engine) -> str:
    """Where a single initiation's time went beside the campaign: accepted → committed, from
    the command rows of the last minute (batch items excluded)."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE completed_at IS NULL),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY completed_at - created_at),"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY completed_at - created_at)"
                " FROM commands WHERE batch_id IS NULL AND created_at > now() - interval '1 min'"
            )
        ).one()
    return f"unfinished={row[0]} accepted_to_committed p50={row[1]} p99={row[2]}"


def _campaign_flowing(
    campaign: subprocess.Popen[bytes], log: Path, redis: Redis, events_before: int
) -> bool:
    """Our workspace is idle here, so any new event on the stream is the campaign's."""
    if campaign.poll() is not None and campaign.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchError(f"bench/fanout.py exited {campaign.returncode}; log tail:\n{tail}")
    return int(redis.xlen(STREAM)) > events_before


async def _open_loop(address: tuple[str, int], requests: list[bytes], rate: int) -> list[Answer]:
    """Sends request i at start + i / rate, whatever has been answered by then."""
    loop = asyncio.get_running_loop()
    connections = _Connections(address)
    start = loop.time() + 0.05
    sending = []
    for index, request in enumerate(requests):
        scheduled = start + index / rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        sending.append(asyncio.create_task(_send(connections, request, scheduled)))
    answers = await asyncio.gather(*sending)
    await connections.close()
    return answers


async def _send(connections: _Connections, request: bytes, scheduled: float) -> Answer:
    loop = asyncio.get_running_loop()
    # How late this process got to the request: if it grows, the generator is the bottleneck.
    lag = loop.time() - scheduled
    connection = None
    try:
        async with asyncio.timeout_at(scheduled + TIMEOUT_S):
            connection = await connections.take()
            status = await connection.exchange(request)
    except TimeoutError:
        outcome = "timeout"
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        outcome = "error"
    else:
        connections.give_back(connection)
        return Answer(status, loop.time() - scheduled, lag)
    if connection is not None:
        connection.writer.close()
    return Answer(outcome, min(loop.time() - scheduled, TIMEOUT_S), lag)


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reusable: bool = True
    last_used: float = 0.0

    async def exchange(self, request: bytes) -> str:
        """Sends the request; reads the status line and skips the rest of the answer."""
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        await self.reader.readexactly(_content_length(head))
        self.reusable = b"\r\nconnection: close\r\n" not in head
        return head[9:12].decode()


def _content_length(head: bytes) -> int:
    start = head.index(b"\r\ncontent-length:") + len(b"\r\ncontent-length:")
    return int(head[start : head.index(b"\r\n", start)])


class _Connections:
    """Keep-alive connections, the most recently used first; a new one when none is idle."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.idle: list[_Connection] = []

    async def take(self) -> _Connection:
        while self.idle:
            connection = self.idle.pop()
            if time.monotonic() - connection.last_used < IDLE_S:
                return connection
            connection.writer.close()
        reader, writer = await asyncio.open_connection(*self.address)
        return _Connection(reader, writer)

    def give_back(self, connection: _Connection) -> None:
        if not connection.reusable:
            connection.writer.close()
            return
        connection.last_used = time.monotonic()
        self.idle.append(connection)

    async def close(self) -> None:
        for connection in self.idle:
            connection.writer.close()
        await asyncio.gather(
            *(connection.writer.wait_closed() for connection in self.idle),
            return_exceptions=True,
        )
        self.idle.clear()


if __name__ == "__main__":
    main()
