"""Benchmark: `leadscout catalog import` of N contacts, wall time and peak RSS of the import.

    .venv/bin/python bench/catalog_import.py               # 100,000 and 1,000,000 contacts
    .venv/bin/python bench/catalog_import.py 10000 30000 --reimport

Each size gets a fresh workspace and a generated file (N contacts plus a small rest of
catalog whose channels reference its brands, agents and users) in a temporary directory;
the real CLI imports it as a subprocess. The database is a fresh one, dropped after, on the
server of LEADSCOUT_DATABASE_URL (or LEADSCOUT_TEST_DATABASE_URL), else on an embedded
PostgreSQL in a temporary directory. One line per run; the last line repeats the largest
insert run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import fresh_database, postgres_server  # noqa: E402
from worker.store import workspaces  # noqa: E402
from worker.store.db import make_engine  # noqa: E402
from worker.store.migrate import upgrade  # noqa: E402

LEADSCOUT = Path(sys.executable).with_name("leadscout")


@dataclass(frozen=True)
class Run:
    contacts: int
    kind: str
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    failure: str = ""

    def line(self) -> str:
        outcome = f" FAILED: {self.failure}" if self.failure else ""
        return (
            f"contacts={self.contacts} run={self.kind} seconds={self.seconds:.1f}"
            f" cli_cpu_s={self.cpu_seconds:.1f} peak_rss_mb={self.peak_rss_mb:.0f}"
            f" rows_per_s={self.contacts / self.seconds:.0f}" + outcome
        )


def main() -> None:
    args = _arguments()
    with _server() as server_url, fresh_database(server_url) as url:
        upgrade(url)
        engine = make_engine(url, pool_size=1)
        runs = []
        for size in args.contacts:
            with engine.begin() as conn:
                workspace_id, _ = workspaces.create(conn, f"bench {size}")
            runs.extend(_bench_size(url, str(workspace_id), size, args.reimport))
        engine.dispose()
    print(max((r for r in runs if r.kind == "insert"), key=lambda r: r.contacts).line())
    if any(run.failure for run in runs):
        sys.exit(1)


def _server() -> AbstractContextManager[str]:
    if url := os.environ.get("LEADSCOUT_DATABASE_URL"):
        return nullcontext(url)
    return postgres_server()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contacts", nargs="*", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--reimport", action="store_true", help="import each file twice")
    return parser.parse_args()


def _bench_size(url: str, workspace_id: str, size: int, reimport: bool) -> list[Run]:
    with tempfile.TemporaryDirectory(prefix="lscatalog") as tmp:
        path = Path(tmp) / f"catalog-{size}.json"
        with path.open("w") as out:
            write_catalog(out, size)
        runs = [_import(url, workspace_id, path, size, "insert")]
        if reimport:
            runs.append(_import(url, workspace_id, path, size, "update"))
    for run in runs:
        print(run.line(), flush=True)
    return runs


def _import(url: str, workspace_id: str, path: Path, size: int, kind: str) -> Run:
    """Runs the CLI; its CPU time and peak RSS come from wait4, which reports on that child
    alone (PostgreSQL's own work is in its server process, counted in the wall time only)."""
    env = {**os.environ, "LEADSCOUT_DATABASE_URL": url}
    command = [str(LEADSCOUT), "catalog", "import", "--workspace", workspace_id, str(path)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        failure = _failure(os.waitstatus_to_exitcode(status), out.read(), err.read(), size, kind)
    cpu_seconds = usage.ru_utime + usage.ru_stime
    return Run(size, kind, seconds, cpu_seconds, usage.ru_maxrss / 1024, failure)


def _failure(returncode: int, stdout: bytes, stderr: bytes, size: int, kind: str) -> str:
    """Why the run failed ("" when it did not), shortened to one line."""
    if returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        return f"exit {returncode}, {len(lines)} lines on stderr, the last: {lines[-1][:160]}"
    counts = json.loads(stdout)["contacts"]
    if kind == "insert":
        expected = {"inserted": size, "updated": 0}
    else:
        expected = {"inserted": 0, "updated": size}
    return "" if counts == expected else f"contact counts {counts}, expected {expected}"


def write_catalog(out: IO[str], contacts: int) -> None:
    """SPEC 3's file: ``contacts`` contacts after a small, cross-referenced rest of catalog."""
    rest = _rest_of_catalog()
    out.write("{")
    for kind, rows in rest.items():
        out.write(f"{json.dumps(kind)}: {json.dumps(rows)}, ")
    out.write('"contacts": [')
    for index, row in enumerate(_contacts(contacts)):
        out.write(("," if index else "") + json.dumps(row))
    out.write("]}")


def _rest_of_catalog() -> dict[str, list[dict[str, Any]]]:
    brands = [{"id": _id(), "name": f"Brand {i}"} for i in range(2)]
    users = [
        {
            "id": _id(),
            "name": f"Advisor {i}",
            "email": f"a{i}@acme.test",
            "role": "advisor",
            "active": True,
        }
        for i in range(2)
    ]
    agents = [
        {"id": _id(), "name": f"Scout {i}", "kind": "prospection", "active": True} for i in range(2)
    ]
    channels = [
        {
            "id": _id(),
            "type": "whatsapp",
            "phoneNumber": f"+52155100000{i:02d}",
            "brandId": brands[i % 2]["id"],
            "agentId": agents[i % 2]["id"],
            "defaultAdvisorId": users[i % 2]["id"],
            "active": True,
            "dailyLimit": 100_000,
            "priority": i,
        }
        for i in range(4)
    ]
    templates = [
        {
            "id": _id(),
            "name": f"welcome_v{i}",
            "language": "es_MX",
            "category": "MARKETING",
            "status": "APPROVED",
            "body": "Hola {{1}}, soy {{2}} de Acme",
            "brandId": brands[0]["id"],
        }
        for i in range(2)
    ]
    return {
        "brands": brands,
        "users": users,
        "agents": agents,
        "channels": channels,
        "templates": templates,
    }


def _contacts(count: int) -> Iterator[dict[str, Any]]:
    for i in range(count):
        yield {
            "id": _id(),
            "name": f"Lead {i}",
            "phone": f"+52155{i:08d}",
            "email": f"lead{i}@example.test" if i % 2 else None,
            "optedOut": i % 50 == 0,
        }


def _id() -> str:
    return str(uuid.uuid4())


if __name__ == "__main__":
    main()
