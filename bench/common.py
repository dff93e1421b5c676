"""What bench/api.py and bench/fanout.py share: servers, the CLI, catalogs, the service as
real processes, and peak RSS read from /proc. Nothing here is timed.

Servers: a fresh database, dropped after, on the server of LEADSCOUT_DATABASE_URL, else on an
embedded PostgreSQL; the Redis of LEADSCOUT_REDIS_URL, else an embedded one. A given Redis
must be the benchmark's alone: its workers consume the service's queues there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.processes import running, service_env, wait_until  # noqa: E402
from tests.servers import fresh_database, postgres_server, redis_server  # noqa: E402

LEADSCOUT = Path(sys.executable).with_name("leadscout")
START_TIMEOUT_S = 120
TEMPLATE_BODY = "Hola {{1}}, soy Scout de Acme"


class BenchError(Exception):
    """The benchmark could not run; the message says which step failed and why."""


@dataclass(frozen=True)
class Servers:
    database_url: str
    redis_url: str

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every `leadscout` process of the benchmark."""
        return service_env(self.database_url, self.redis_url, **extra)


@contextmanager
def servers() -> Iterator[Servers]:
    with ExitStack() as opened:
        server = os.environ.get("LEADSCOUT_DATABASE_URL") or opened.enter_context(postgres_server())
        database_url = opened.enter_context(fresh_database(server))
        redis_url = os.environ.get("LEADSCOUT_REDIS_URL") or opened.enter_context(redis_server())
        yield Servers(database_url, redis_url)


def leadscout(servers: Servers, *args: str) -> str:
    """Runs `leadscout ARGS` to its end; returns its stdout."""
    done = subprocess.run(
        [str(LEADSCOUT), *args], env=servers.env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        raise BenchError(f"`leadscout {args[0]}` exited {done.returncode}: {lines[-1][:300]}")
    return done.stdout


@dataclass(frozen=True)
class Workspace:
    id: str
    api_key: str


def create_workspace(servers: Servers, name: str) -> Workspace:
    created = json.loads(leadscout(servers, "workspace", "create", "--name", name))
    return Workspace(created["workspaceId"], created["apiKey"])


@dataclass(frozen=True)
class Catalog:
    """The ids of a benchmark catalog: one prospection agent per WhatsApp channel, one
    APPROVED template with one placeholder, and contacts that have not opted out."""

    agent_ids: list[str]
    channel_ids: list[str]
    template_id: str
    contact_ids: list[str]


def import_catalog(
    servers: Servers, workspace: Workspace, folder: Path, contacts: int, daily_limits: list[int]
) -> Catalog:
    """Writes the catalog (one channel per daily limit, all of priority 0) and imports it
    with `leadscout catalog import`."""
    catalog = Catalog(
        agent_ids=[_uuid() for _ in daily_limits],
        channel_ids=[_uuid() for _ in daily_limits],
        template_id=_uuid(),
        contact_ids=[_uuid() for _ in range(contacts)],
    )
    path = folder / f"catalog-{workspace.id}.json"
    with path.open("w") as out:
        _write_catalog(out, catalog, daily_limits)
    leadscout(servers, "catalog", "import", "--workspace", workspace.id, str(path))
    path.unlink()
    return catalog


def _write_catalog(out: Any, catalog: Catalog, daily_limits: list[int]) -> None:
    rest = {
        "agents": [
            {"id": agent_id, "name": f"Scout {i}", "kind": "prospection", "active": True}
            for i, agent_id in enumerate(catalog.agent_ids)
        ],
        "channels": [
            {
                "id": channel_id,
                "type": "whatsapp",
                "phoneNumber": f"+52155100000{i:02d}",
                "brandId": None,
                "agentId": agent_id,
                "active": True,
                "dailyLimit": limit,
                "priority": 0,
            }
            for i, (channel_id, agent_id, limit) in enumerate(
                zip(catalog.channel_ids, catalog.agent_ids, daily_limits, strict=True)
            )
        ],
        "templates": [
            {
                "id": catalog.template_id,
                "name": "bench_welcome",
                "language": "es_MX",
                "category": "MARKETING",
                "status": "APPROVED",
                "body": TEMPLATE_BODY,
                "brandId": None,
            }
        ],
    }
    out.write("{")
    for kind, rows in rest.items():
        out.write(f"{json.dumps(kind)}: {json.dumps(rows)}, ")
    out.write('"contacts": [')
    for i, contact_id in enumerate(catalog.contact_ids):
        row = {"id": contact_id, "name": f"Lead {i}", "phone": f"+52155{i:08d}", "optedOut": False}
        out.write(("," if i else "") + json.dumps(row))
    out.write("]}")


def _uuid() -> str:
    return str(uuid.uuid4())


@dataclass
class Stack:
    """The service as real processes: api, worker (single initiations), worker.campaign (or
    worker.campaign1..N), relay, reporter."""

    api_url: str
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path

    def assert_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise BenchError(f"`leadscout {name}` exited; log tail:\n{self.tail(name)}")

    def tail(self, name: str, chars: int = 3000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def workers(self) -> list[str]:
        return [name for name in self.processes if name.startswith("worker")]


@contextmanager
def service_stack(servers: Servers, logs: Path, workers: int, concurrency: int) -> Iterator[Stack]:
    """Starts every process (logs under ``logs``), waits until the API is ready and every
    worker consumes; stops them all after."""
    port = _free_port()
    campaign_workers = (
        ["worker.campaign"]
        if workers == 1
        else [f"worker.campaign{i}" for i in range(1, workers + 1)]
    )
    campaign_queue = ["--queues", "leadscout.campaign", "--nice", "10"]
    commands = {
        "api": ["api", "--host", "127.0.0.1", "--port", str(port)],
        # As `leadscout dev` runs them: single initiations have workers of their own.
        "worker": ["worker", "--concurrency", "2", "--queues", "leadscout"],
        **{
            name: ["worker", "--concurrency", str(concurrency), *campaign_queue]
            for name in campaign_workers
        },
        "relay": ["relay"],
        "reporter": ["reporter", "--nice", "10"],
    }
    with ExitStack() as started:
        processes = {
            name: started.enter_context(running(args, servers.env(), logs / f"{name}.log"))
            for name, args in commands.items()
        }
        stack = Stack(f"http://127.0.0.1:{port}", processes, logs)
        wait_until(lambda: _ready(stack), START_TIMEOUT_S, "the API and every worker")
        yield stack


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(stack: Stack) -> bool:
    stack.assert_alive()
    if not all("worker.ready" in stack.tail(name, chars=10**6) for name in stack.workers()):
        return False
    try:
        return httpx.get(stack.api_url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path, stop: signal.Signals = signal.SIGTERM
) -> Iterator[subprocess.Popen[bytes]]:
    """Runs a command that is not `leadscout` (celery, py-spy) in its own process group,
    like tests.processes.running; ``stop`` to the group after, SIGKILL if it lingers."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            stop_group(process, stop)


def stop_group(process: subprocess.Popen[Any], first: signal.Signals) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def peak_rss_mb(processes: dict[str, int]) -> dict[str, float]:
    """VmHWM (the kernel's peak resident set) of each process and of each of its
    descendants, named ``name``, ``name.1``, ``name.2``...; read while they still run."""
    children = _children_by_parent()
    peaks: dict[str, float] = {}
    for name, pid in processes.items():
        for index, member in enumerate(_family(pid, children)):
            if (peak := _vm_hwm_mb(member)) is not None:
                peaks[f"{name}.{index}" if index else name] = peak
    return peaks


def cpu_seconds(processes: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process with all its descendants, so far."""
    children = _children_by_parent()
    return {
        name: sum(_cpu_of(member) for member in _family(pid, children))
        for name, pid in processes.items()
    }


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (every core), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / _TICKS


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def format_cpu(seconds: dict[str, float]) -> str:
    return " ".join(f"{name}={s:.1f}s" for name, s in seconds.items())


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (2nd field) may hold spaces: the parent pid follows its ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def _family(pid: int, children: dict[int, list[int]]) -> list[int]:
    family = [pid]
    for member in family:
        family.extend(sorted(children.get(member, [])))
    return family


def _vm_hwm_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def format_rss(peaks: dict[str, float]) -> str:
    return " ".join(f"{name}={mb:.0f}" for name, mb in peaks.items())


def progress(message: str) -> None:
    """Where the benchmark is, on stderr; stdout holds only the result lines."""
    print(message, file=sys.stderr, flush=True)
