"""``leadscout dev``: the whole stack on one machine, on embedded servers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from core.embedded import start_postgres, start_redis
from core.settings import Settings
from leadscout.demo import DEMO_CATALOG, DEMO_CONTACT_ID, DEMO_TEMPLATE_ID

READY_TIMEOUT_S = 60


@dataclass
class DevStack:
    database_url: str
    redis_url: str
    workspace_id: UUID
    api_key: str


def prepare(settings: Settings) -> tuple[DevStack, list[Any]]:
    """Embedded servers (kept alive by the returned handles), migrations, demo workspace."""
    from worker.store.migrate import upgrade

    pg, database_url = start_postgres(settings.data_dir / "pg")
    redis, redis_url = start_redis(settings.data_dir / "redis")
    upgrade(database_url)
    workspace_id, api_key = _demo_workspace(database_url, settings.data_dir / "demo.json")
    return DevStack(database_url, redis_url, workspace_id, api_key), [pg, redis]


def _demo_workspace(database_url: str, remembered: Path) -> tuple[UUID, str]:
    """The demo workspace of an earlier run, or a new one with the demo catalog."""
    from schemas.catalog import CatalogFile
    from worker.store import catalog, workspaces
    from worker.store.db import get_engine
    from worker.store.tables import workspaces as workspace_table

    with get_engine(database_url).begin() as conn:
        if remembered.exists():
            saved = json.loads(remembered.read_text())
            workspace_id = UUID(saved["workspaceId"])
            if conn.execute(
                workspace_table.select().where(workspace_table.c.id == workspace_id)
            ).first():
                return workspace_id, str(saved["apiKey"])
        workspace_id, api_key = workspaces.create(conn, "Demo")
        catalog.import_file(conn, workspace_id, CatalogFile.model_validate(DEMO_CATALOG))
    remembered.write_text(json.dumps({"workspaceId": str(workspace_id), "apiKey": api_key}))
    return workspace_id, api_key


def run(settings: Settings, host: str, port: int) -> None:
    stack, servers = prepare(settings)
    env = {
        **os.environ,
        "LEADSCOUT_DATABASE_URL": stack.database_url,
        "LEADSCOUT_REDIS_URL": stack.redis_url,
        # Console logs in dev unless the user asked for a format explicitly.
        "LEADSCOUT_LOG_FORMAT": os.environ.get("LEADSCOUT_LOG_FORMAT", "console"),
    }
    commands = [
        ["api", "--host", host, "--port", str(port)],
        # Single initiations have a worker of their own, so a campaign cannot hold them up.
        ["worker", "--concurrency", "1", "--queues", "leadscout"],
        ["relay"],
        ["reporter", "--nice", "10"],
        ["worker", "--concurrency", "2", "--queues", "leadscout.campaign", "--nice", "10"],
    ]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "leadscout", *args], env=_with_metrics_port(env, offset)
        )
        for offset, args in enumerate(commands)
    ]
    _wait_ready(f"http://{host}:{port}", children)
    _announce(stack, host, port)
    try:
        _supervise(children)
    finally:
        _stop(children)
        del servers


def _with_metrics_port(env: dict[str, str], offset: int) -> dict[str, str]:
    """LEADSCOUT_METRICS_PORT=P gives the worker P+1, the relay P+2, the reporter P+3, the
    campaign worker P+4.

    One port each: processes that share a host cannot share a listener.
    """
    base = env.get("LEADSCOUT_METRICS_PORT")
    if not base or offset == 0:  # the API serves /metrics on its own port
        return {k: v for k, v in env.items() if k != "LEADSCOUT_METRICS_PORT"}
    return {**env, "LEADSCOUT_METRICS_PORT": str(int(base) + offset)}


def _wait_ready(base: str, children: list[subprocess.Popen[bytes]]) -> None:
    """Until the API answers ``/readyz`` (so the curl announced next works as pasted), a
    child exits (``_supervise`` reports it), or READY_TIMEOUT_S pass."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and all(child.poll() is None for child in children):
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # not listening yet, or 503 while a server is unreachable
            pass
        time.sleep(0.2)


def _announce(stack: DevStack, host: str, port: int) -> None:
    base = f"http://{host}:{port}"
    body = json.dumps(
        {
            "contactId": DEMO_CONTACT_ID,
            "template": {"templateId": DEMO_TEMPLATE_ID, "parameters": ["Luis", "Ana"]},
            "forceSend": True,
        }
    )
    url = f"{base}/v1/workspaces/{stack.workspace_id}/leadscout/outbound"
    print(
        f"\nLeadScout Outbound is up at {base}  (docs: {base}/docs)\n"
        f"workspace: {stack.workspace_id}\n"
        f"API key:   {stack.api_key}\n\n"
        f"Try it:\n"
        f"  curl -sS -X POST {url} \\\n"
        f"    -H 'X-API-Key: {stack.api_key}' -H 'Content-Type: application/json' \\\n"
        f"    -d '{body}'\n\n"
        f"A campaign from a CSV (contactId,p1,p2 per row):\n"
        f"  LEADSCOUT_API_URL={base} LEADSCOUT_API_KEY={stack.api_key} \\\n"
        f"    leadscout campaign launch --workspace {stack.workspace_id} \\\n"
        f"    --template {DEMO_TEMPLATE_ID} --contacts leads.csv\n\n"
        f"Ctrl-C stops everything.\n",
        flush=True,
    )


def _supervise(children: list[subprocess.Popen[bytes]]) -> None:
    stop = {"now": False}

    def request_stop(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop["now"]:
            for child in children:
                if child.poll() is not None and not stop["now"]:
                    print(
                        f"leadscout: {child.args[3:]} exited ({child.returncode})", file=sys.stderr
                    )
                    return
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
