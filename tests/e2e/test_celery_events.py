"""Celery task events, as `celery -A worker.celery_app events` (and Flower) see them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import Api, Catalog
from tests.processes import service_env, wait_until
from tests.world import body

# The README's command, with --dump: one line per event instead of the curses screen.
CELERY_EVENTS = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "events", "--dump"]
TASK_LINE = re.compile(r"\] (task \w+): leadscout\.initiate_outbound\((?P<task_id>[0-9a-f-]+)\)")


@pytest.fixture
def event_dump(stack, database_url: str, redis_url: str, tmp_path: Path) -> Iterator[Path]:
    """The dump's output file, once it has heard the worker (so no task event is missed)."""
    output = tmp_path / "celery-events.log"
    # Only LEADSCOUT_REDIS_URL tells the command where the broker is: no --broker.
    env = service_env(database_url, redis_url)
    with output.open("wb") as out:
        dump = subprocess.Popen(
            CELERY_EVENTS, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(lambda: "heartbeat" in output.read_text(), 30, "a worker heartbeat")
            yield output
        finally:
            os.killpg(dump.pid, signal.SIGTERM)
            dump.wait(timeout=15)


def task_events(output: Path, command_id: str) -> list[str]:
    """The kinds of task event the dump printed for the task carrying this command."""
    lines = output.read_text().splitlines()
    task_ids = {
        m["task_id"] for line in lines if command_id in line and (m := TASK_LINE.search(line))
    }
    return [m[1] for line in lines if (m := TASK_LINE.search(line)) and m["task_id"] in task_ids]


class TestCeleryTaskEvents:
    """The API and the worker publish task events on the broker for monitors."""

    def test_an_initiation_is_sent_received_started_and_succeeded(
        self, event_dump: Path, api: Api, catalog: Catalog
    ):
        """One initiation shows up once as each of the four task events, sent first."""
        command_id = api.created(body(catalog.contact, catalog.template))["commandId"]

        wait_until(
            lambda: "task succeeded" in task_events(event_dump, command_id),
            10,
            "the task-succeeded event",
        )

        assert sorted(task_events(event_dump, command_id)) == [
            "task received",
            "task sent",
            "task started",
            "task succeeded",
        ]
