"""Benchmark: a campaign fan-out end to end (SPEC 9 speed), beside its broker's ceiling.

    .venv/bin/python bench/fanout.py                       # 100,000 leads over 4 channels
    .venv/bin/python bench/fanout.py --leads 2000 --ceiling-tasks 2000

The service runs as real processes (api, `--workers` workers of `--concurrency` each, relay,
reporter) on the servers of bench/common.py. One workspace holds 4 WhatsApp channels of
priority 0, each with its prospection agent and a daily limit of leads/4 + 5 % + 100, an
APPROVED template with one placeholder and `--leads` contacts (`leadscout catalog import`).
The campaign is launched as a user would: `leadscout campaign launch ... --json` on a CSV of
`contactId,p1`; it sends batches of 10,000 and follows them to the end.

Printed:
- initiations/s: finished commands over first accepted (the campaign's smallest
  `commands.created_at`) → the last of its initiation events reaching the stream (the
  entry's id, Redis's clock); both clocks are read once against this machine's first;
- per command, accepted → committed: p50/p99 of `completed_at - created_at` in PostgreSQL;
- peak RSS (VmHWM) of every process of the service, pool children included, and of the launch;
- the ceiling, once the service has stopped (`--no-ceiling` skips it): `--ceiling-tasks`
  no-op tasks (bench/noop_tasks.py) are queued, then as many Celery workers of the same
  concurrency are started on the same Redis; the clock runs from the queue's first decrease
  to its end.
Last line: `rate=<initiations/s> ceiling=<no-op tasks/s> ratio=<rate/ceiling>`.

`--profile [FILE]` records the (first) campaign worker and its pool with py-spy, if it is in
.venv: a flame graph, or collapsed stacks of on-CPU samples for a FILE ending in .txt.
`--api-url URL` runs only the campaign, on a running stack whose servers are
LEADSCOUT_DATABASE_URL / LEADSCOUT_REDIS_URL (no migration, no ceiling): bench/api.py uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from redis import Redis  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402

from bench import noop_tasks  # noqa: E402
from bench.common import (  # noqa: E402
    LEADSCOUT,
    BenchError,
    Catalog,
    Servers,
    Stack,
    Workspace,
    cpu_seconds,
    create_workspace,
    format_cpu,
    format_rss,
    import_catalog,
    leadscout,
    machine_cpu_seconds,
    peak_rss_mb,
    progress,
    servers,
    service_stack,
    started,
)
from tests.processes import wait_until  # noqa: E402
from worker.celery_app import broker_url  # noqa: E402
from worker.store.db import make_engine  # noqa: E402

CHANNELS = 4
STREAM = "leadscout:events"
INITIATIONS = frozenset(
    {
        "leadscout.conversation.created",
        "leadscout.conversation.reused",
        "leadscout.initiation.rejected",
    }
)
CELERY = Path(sys.executable).with_name("celery")
PY_SPY = Path(sys.executable).with_name("py-spy")
POLL_S = 0.5
PROGRESS_EVERY_S = 15.0
DRAIN_POLL_S = 0.005


def main() -> None:
    args = _arguments()
    # SIGTERM (bench/api.py stopping its campaign) unwinds like Ctrl-C: processes and
    # temporary files are cleaned up.
    signal.signal(signal.SIGTERM, _exit)
    try:
        with tempfile.TemporaryDirectory(prefix="lsfanout") as tmp:
            run, ceiling = _measure(args, Path(tmp))
    except (BenchError, TimeoutError) as exc:
        progress(f"fanout: {exc}")
        sys.exit(1)
    for line in run.lines(args):
        print(line)
    if ceiling is not None:
        print(ceiling.line())
    print(_summary(run, ceiling))
    if run.failures:
        sys.exit(1)


def _measure(args: argparse.Namespace, folder: Path) -> tuple[CampaignRun, Ceiling | None]:
    if not args.api_url:
        return _standalone(args, folder)
    urls = Servers(os.environ["LEADSCOUT_DATABASE_URL"], os.environ["LEADSCOUT_REDIS_URL"])
    return _campaign(args, urls, folder, None, args.api_url), None


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="`leadscout worker` processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    parser.add_argument("--batch-size", type=int, default=10_000, help="items per batch call")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="for the whole campaign")
    parser.add_argument("--no-ceiling", action="store_true", help="skip the no-op ceiling")
    parser.add_argument("--ceiling-tasks", type=int, default=20_000)
    parser.add_argument("--profile", nargs="?", const="fanout-worker.svg", metavar="FILE.svg")
    parser.add_argument("--api-url", help="run the campaign only, on this running stack")
    return parser.parse_args()


def _standalone(args: argparse.Namespace, folder: Path) -> tuple[CampaignRun, Ceiling | None]:
    with servers() as urls:
        leadscout(urls, "migrate")
        with service_stack(urls, folder, args.workers, args.concurrency) as stack:
            run = _campaign(args, urls, folder, stack, stack.api_url)
        ceiling = None if args.no_ceiling else _ceiling(args, urls, folder)
    return run, ceiling


@dataclass
class CampaignRun:
    leads: int
    launch: dict[str, Any]  # the launch's --json summary
    commands: dict[str, Any]  # counts and latencies from PostgreSQL
    events: Events
    seconds: float  # first accepted → last initiation event on the stream
    peak_rss_mb: dict[str, float]
    # CPU seconds during the campaign per process (a service's pool, PostgreSQL's backends
    # included); "rest" is the rest of the machine.
    cpu_s: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return float(self.commands["succeeded"] + self.commands["failed"]) / self.seconds

    def lines(self, args: argparse.Namespace) -> list[str]:
        c = self.commands
        errors = ",".join(f"{code}:{n}" for code, n in sorted(c["errors"].items())) or "none"
        return [
            f"fanout: leads={self.leads} channels={CHANNELS}"
            f" workers={args.workers}x{args.concurrency} batches={self.launch.get('batches')}"
            f" succeeded={c['succeeded']} failed={c['failed']} errors={errors}",
            f"fanout: events={self.events.distinct} duplicates={self.events.duplicates}"
            f" first_accepted_to_last_event={self.seconds:.1f}s initiations/s={self.rate:.1f}",
            f"fanout: per command accepted→committed p50={c['p50'] * 1000:.0f}ms"
            f" p99={c['p99'] * 1000:.0f}ms",
            f"fanout: peak_rss_mb {format_rss(self.peak_rss_mb)}",
            f"fanout: cpu_during_campaign {format_cpu(self.cpu_s)}",
            *(f"fanout: FAILED: {failure}" for failure in self.failures),
        ]


def _campaign(
    args: argparse.Namespace, urls: Servers, folder: Path, stack: Stack | None, api_url: str
) -> CampaignRun:
    workspace, catalog, contacts = _prepare(args, urls, folder)
    engine = make_engine(urls.database_url, pool_size=1)
    redis = Redis.from_url(urls.redis_url)
    try:
        clocks = Clocks.read(engine, redis)
        after = _last_entry_id(redis)
        progress(f"fanout: launching the campaign in workspace {workspace.id}")
        pids = {n: p.pid for n, p in stack.processes.items()} if stack else {}
        pids |= _server_pids(engine, redis)
        cpu_before, machine_before = cpu_seconds(pids), machine_cpu_seconds()
        with _profiled(args.profile, stack, folder):
            launch = _launch(args, urls, folder, workspace, catalog, contacts, api_url)
            _follow(launch, redis, stack, args.leads)
        cpu = {n: s - cpu_before.get(n, 0.0) for n, s in cpu_seconds(pids).items()}
        cpu["launch"] = launch.cpu_s
        cpu["rest"] = machine_cpu_seconds() - machine_before - sum(cpu.values())
        progress("fanout: campaign finished; reading the stream and the commands")
        _wait_outbox_sent(engine, workspace)
        events = _campaign_events(redis, after, workspace.id)
        commands = _command_stats(engine, workspace)
        peaks = peak_rss_mb({n: p.pid for n, p in stack.processes.items()}) if stack else {}
    finally:
        engine.dispose()
        redis.close()
    seconds = clocks.seconds_between(commands["first_accepted"], events.last_arrival)
    summary = json.loads(launch.out.read_text())
    peaks["launch"] = launch.peak_rss_mb
    run = CampaignRun(args.leads, summary, commands, events, seconds, peaks, cpu)
    run.failures = _failures(run)
    return run


def _prepare(
    args: argparse.Namespace, urls: Servers, folder: Path
) -> tuple[Workspace, Catalog, Path]:
    """The campaign's workspace (4 channels sharing the leads with a margin, the leads) and
    its CSV of ``contactId,p1``."""
    workspace = create_workspace(urls, "bench fanout")
    daily_limit = args.leads // CHANNELS + args.leads // 20 + 100
    progress(f"fanout: importing {args.leads} contacts")
    catalog = import_catalog(urls, workspace, folder, args.leads, [daily_limit] * CHANNELS)
    return workspace, catalog, _contacts_csv(folder, catalog)


def _contacts_csv(folder: Path, catalog: Catalog) -> Path:
    path = folder / "contacts.csv"
    with path.open("w") as out:
        out.write("contactId,p1\n")
        out.writelines(
            f"{contact_id},Lead {i}\n" for i, contact_id in enumerate(catalog.contact_ids)
        )
    return path


@dataclass(frozen=True)
class Clocks:
    """How far PostgreSQL's and Redis's clocks are ahead of this machine's, in seconds."""

    postgres: float
    redis: float

    @classmethod
    def read(cls, engine: Engine, redis: Redis) -> Clocks:
        with engine.connect() as conn:
            query = text("SELECT extract(epoch FROM clock_timestamp())")
            conn.execute(query)  # the connection is open before the clock reading starts
            postgres = cls._offset(lambda: float(conn.execute(query).scalar_one()))
        redis.ping()

        def redis_now() -> float:
            seconds, micros = redis.time()
            return float(seconds) + micros / 1e6

        return cls(postgres, cls._offset(redis_now))

    @staticmethod
    def _offset(remote_now: Callable[[], float]) -> float:
        before = time.time()
        remote = remote_now()
        return remote - (before + time.time()) / 2

    def seconds_between(self, postgres_time: float, redis_time: float) -> float:
        return (redis_time - self.redis) - (postgres_time - self.postgres)


def _server_pids(engine: Engine, redis: Redis) -> dict[str, int]:
    """PostgreSQL's postmaster (the parent of a backend) and Redis, when on this machine."""
    with engine.connect() as conn:
        backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    pids = {"redis": int(redis.info("server")["process_id"])}
    try:
        stat = Path(f"/proc/{backend}/stat").read_text()
    except OSError:
        return pids
    return {"postgres": int(stat.rsplit(")", 1)[1].split()[1])} | pids


def _last_entry_id(redis: Redis) -> str:
    entries = redis.xrevrange(STREAM, count=1)
    return entries[0][0].decode() if entries else "0-0"


@dataclass
class Launch:
    """`leadscout campaign launch` as a child of this process; its exit and peak RSS come
    from wait4, which reports on that child alone."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    exit_code: int | None = None
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0

    def finished(self) -> bool:
        if self.exit_code is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                self.peak_rss_mb = usage.ru_maxrss / 1024
                self.cpu_s = usage.ru_utime + usage.ru_stime
        return self.exit_code is not None

    def check(self) -> None:
        if self.finished() and self.exit_code != 0:
            lines = self.err.read_text(errors="replace").strip().splitlines() or ["no output"]
            raise BenchError(f"`leadscout campaign launch` exited {self.exit_code}: {lines[-1]}")


def _launch(
    args: argparse.Namespace,
    urls: Servers,
    folder: Path,
    workspace: Workspace,
    catalog: Catalog,
    contacts: Path,
    api_url: str,
) -> Launch:
    command = [str(LEADSCOUT), "campaign", "launch", "--workspace", workspace.id]
    command += ["--template", catalog.template_id, "--contacts", str(contacts)]
    command += ["--campaign", f"bench-{uuid.uuid4().hex[:12]}", "--api-url", api_url]
    command += ["--batch-size", str(args.batch_size), "--timeout", str(args.timeout), "--json"]
    out, err = folder / "launch.json", folder / "launch.log"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # Same process group as this one: whoever stops this benchmark stops the launch too.
        process = subprocess.Popen(
            command, env=urls.env(LEADSCOUT_API_KEY=workspace.api_key), stdout=stdout, stderr=stderr
        )
    return Launch(process, out, err)


def _follow(launch: Launch, redis: Redis, stack: Stack | None, leads: int) -> None:
    """Until the launch has seen every item finish; progress on stderr meanwhile."""
    start_length = int(redis.xlen(STREAM))
    next_report = time.monotonic() + PROGRESS_EVERY_S
    while not launch.finished():
        if stack is not None:
            stack.assert_alive()
        if time.monotonic() >= next_report:
            events = int(redis.xlen(STREAM)) - start_length
            progress(f"fanout: {events} of {leads} events on the stream")
            next_report += PROGRESS_EVERY_S
        time.sleep(POLL_S)
    launch.check()


def _wait_outbox_sent(engine: Engine, workspace: Workspace) -> None:
    """The launch saw every command finish; their events may still be on their way."""

    def sent() -> bool:
        with engine.connect() as conn:
            return not conn.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM outbox_writes w JOIN outbox o"
                    " ON o.write_id = w.id"
                    " WHERE w.published_at IS NULL AND o.workspace_id = :workspace)"
                ),
                {"workspace": workspace.id},
            ).scalar_one()

    wait_until(sent, 120, "the campaign's events to leave the outbox")


@dataclass(frozen=True)
class Events:
    distinct: int  # distinct initiation event ids of the workspace
    duplicates: int  # entries repeating one of those ids (at-least-once delivery)
    commands: int  # distinct commandIds among them
    last_arrival: float  # Redis time (s) of the last of them to reach the stream


def _campaign_events(redis: Redis, after: str, workspace_id: str) -> Events:
    """The workspace's initiation events entered after ``after``, read once the clock stopped."""
    seen: set[str] = set()
    commands: set[str] = set()
    duplicates, last_ms = 0, 0
    start = f"({after}"
    while entries := redis.xrange(STREAM, min=start, max="+", count=10_000):
        for entry_id, fields in entries:
            event = json.loads(fields[b"event"])
            if event.get("workspaceid") != workspace_id or event.get("type") not in INITIATIONS:
                continue
            if event["id"] in seen:
                duplicates += 1
                continue
            seen.add(event["id"])
            commands.add(event["data"]["commandId"])
            last_ms = max(last_ms, int(entry_id.split(b"-")[0]))
        start = "(" + entries[-1][0].decode()
    return Events(len(seen), duplicates, len(commands), last_ms / 1000)


def _command_stats(engine: Engine, workspace: Workspace) -> dict[str, Any]:
    """The workspace's commands (all the campaign's): counts, first acceptance, latencies."""
    latency = "extract(epoch FROM completed_at - created_at)"
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,"
                " count(*) FILTER (WHERE status = 'failed') AS failed,"
                " count(*) AS total,"
                " extract(epoch FROM min(created_at)) AS first_accepted,"
                f" percentile_cont(0.5) WITHIN GROUP (ORDER BY {latency}) AS p50,"
                f" percentile_cont(0.99) WITHIN GROUP (ORDER BY {latency}) AS p99"
                " FROM commands WHERE workspace_id = :workspace"
            ),
            {"workspace": workspace.id},
        ).one()
        errors = conn.execute(
            text(
                "SELECT error_code, count(*) FROM commands"
                " WHERE workspace_id = :workspace AND status = 'failed' GROUP BY error_code"
            ),
            {"workspace": workspace.id},
        ).all()
    stats = {key: float(value or 0) for key, value in row._mapping.items()}
    for count in ("succeeded", "failed", "total"):
        stats[count] = int(stats[count])
    return stats | {"errors": {str(code): int(n) for code, n in errors}}


def _failures(run: CampaignRun) -> list[str]:
    """What makes the run not a measure of the whole campaign."""
    c, events = run.commands, run.events
    checks = {
        f"{c['total']} commands, expected {run.leads}": c["total"] == run.leads,
        f"{c['total'] - c['succeeded'] - c['failed']} commands unfinished": (
            c["succeeded"] + c["failed"] == c["total"]
        ),
        f"events for {events.commands} commands, expected {c['total']}": (
            events.commands == c["total"]
        ),
        f"{c['failed']} commands failed": c["failed"] == 0,
    }
    return [failure for failure, ok in checks.items() if not ok]


@contextmanager
def _profiled(output: str | None, stack: Stack | None, folder: Path) -> Iterator[None]:
    if output is None or stack is None:
        yield
        return
    if not PY_SPY.exists():
        progress("fanout: --profile: py-spy is not in .venv (pip install py-spy); no profile")
        yield
        return
    worker = stack.processes[next(n for n in stack.workers() if n.startswith("worker.campaign"))]
    output = str(Path(output).resolve())
    command = [
        str(PY_SPY),
        "record",
        "--pid",
        str(worker.pid),
        "--subprocesses",
        "--gil",
        "-o",
        output,
    ]
    if output.endswith(".txt"):  # collapsed stacks, for reading as text
        command += ["--format", "raw"]
    with started(command, dict(os.environ), folder / "py-spy.log", stop=signal.SIGINT):
        yield
    progress(f"fanout: worker profile written to {output}")


@dataclass(frozen=True)
class Ceiling:
    tasks: int  # drained while the clock ran
    seconds: float
    workers: int
    concurrency: int

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    def line(self) -> str:
        return (
            f"ceiling: no-op celery tasks={self.tasks} seconds={self.seconds:.2f}"
            f" tasks/s={self.rate:.0f} workers={self.workers}x{self.concurrency} (same Redis)"
        )


def _ceiling(args: argparse.Namespace, urls: Servers, folder: Path) -> Ceiling:
    redis = Redis.from_url(urls.redis_url)
    queued = _queue_noop_tasks(redis, urls, args.ceiling_tasks)
    command = [str(CELERY), "--quiet", "-A", "bench.noop_tasks", "worker", "--loglevel=WARNING"]
    command += [f"--concurrency={args.concurrency}", "--pool=prefork"]
    command += [f"--queues={noop_tasks.QUEUE}", "--without-gossip", "--without-mingle"]
    env = urls.env(PYTHONPATH=str(ROOT))
    progress(f"ceiling: draining with {args.workers} worker(s) of concurrency {args.concurrency}")
    with ExitStack() as running:
        workers = [
            running.enter_context(started(command, env, folder / f"noop{i}.log"))
            for i in range(args.workers)
        ]
        drain = _Drain(redis, noop_tasks.QUEUE, workers, folder)
        first_taken = drain.when(lambda left: left < queued)
        left_then = drain.left
        drained = drain.when(lambda left: left == 0)
    redis.close()
    return Ceiling(left_then, drained - first_taken, args.workers, args.concurrency)


def _queue_noop_tasks(redis: Redis, urls: Servers, count: int) -> int:
    """Queues ``count`` no-op tasks before any worker runs: publishing is not timed."""
    progress(f"ceiling: queueing {count} no-op tasks")
    redis.delete(noop_tasks.QUEUE)
    noop_tasks.app.conf.broker_url = broker_url(urls.redis_url)
    with noop_tasks.app.producer_or_acquire() as producer:
        for _ in range(count):
            noop_tasks.noop.apply_async(producer=producer)
    queued = int(redis.llen(noop_tasks.QUEUE))
    if queued != count:
        raise BenchError(f"{queued} no-op tasks queued, expected {count}")
    return queued


@dataclass
class _Drain:
    """Watches a Celery queue (a Redis list) at a few milliseconds' resolution."""

    redis: Redis
    queue: str
    workers: list[subprocess.Popen[bytes]]
    folder: Path
    left: int = 0

    def when(self, condition: Callable[[int], bool], timeout_s: float = 600) -> float:
        """The time at which ``condition(tasks left)`` first held."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            self.left = int(self.redis.llen(self.queue))
            if condition(self.left):
                return now
            if now > deadline or any(worker.poll() is not None for worker in self.workers):
                log = (self.folder / "noop0.log").read_text(errors="replace")[-2000:]
                raise BenchError(f"the no-op workers stopped draining; log tail:\n{log}")
            time.sleep(DRAIN_POLL_S)


def _summary(run: CampaignRun, ceiling: Ceiling | None) -> str:
    if ceiling is None:
        return f"rate={run.rate:.1f} ceiling=- ratio=-"
    return f"rate={run.rate:.1f} ceiling={ceiling.rate:.0f} ratio={run.rate / ceiling.rate:.3f}"


if __name__ == "__main__":
    main()
