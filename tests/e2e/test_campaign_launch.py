"""SPEC 8's ``leadscout campaign launch`` as a real process against the real stack."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select

from tests.e2e.conftest import Stack
from tests.e2e.support import STREAM
from tests.processes import LEADSCOUT, running, wait_until
from tests.world import World
from worker.store.tables import batches, commands, conversations

LAUNCH_TIMEOUT_S = 240
TIMINGS = ("elapsedS", "itemsPerS")


def write_csv(path: Path, contact_ids: list[Any]) -> Path:
    path.write_text("contactId,p1,p2\n" + "".join(f"{c},Luis,Ana\n" for c in contact_ids))
    return path


def launch_env(stack: Stack, world: World) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCOUT_")}
    return env | {"LEADSCOUT_API_URL": stack.base_url, "LEADSCOUT_API_KEY": world.api_key}


def launch_args(world: World, template: UUID, csv: Path, *extra: str) -> list[str]:
    return [
        "campaign",
        "launch",
        "--workspace",
        str(world.workspace_id),
        "--template",
        str(template),
        "--contacts",
        str(csv),
        *extra,
    ]


def launch(
    stack: Stack, world: World, template: UUID, csv: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        LEADSCOUT + launch_args(world, template, csv, *extra),
        env=launch_env(stack, world),
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The --json summary without its timings (checked for shape only)."""
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert all(isinstance(answer.pop(name), float) for name in TIMINGS), answer
    return dict(answer)


def scalar(engine: Engine, query: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


@pytest.fixture
def campaign_world(world: World) -> tuple[World, UUID]:
    """A workspace whose one channel has room for every contact of these tests, and a template
    with two parameters."""
    world.channel(world.agent(), dailyLimit=1_000_000)
    return world, world.template()


class TestLaunch:
    """A CSV becomes batches of the campaign; the summary holds the campaign's exact counts."""

    def test_several_chunks_with_unknown_opted_out_and_invalid_rows(
        self, stack: Stack, campaign_world: tuple[World, UUID], tmp_path: Path
    ):
        world, template = campaign_world
        known = world.contacts(1200)
        opted_out = world.contacts(2, opted_out=2)
        rows = [*known[:600], "not-a-uuid", *opted_out, uuid4(), uuid4(), "", *known[600:], uuid4()]
        csv = write_csv(tmp_path / "contacts.csv", rows)

        result = launch(
            stack, world, template, csv, "--campaign", "spring-e2e", "--batch-size", "250", "--json"
        )

        assert summary(result) == {
            "campaignId": "spring-e2e",
            "rows": 1207,
            "batches": 5,
            "accepted": 1205,
            "invalidRows": 2,
            "finished": 1205,
            "allFinished": True,
            "created": 1200,
            "reused": 0,
            "rejected": {"ContactNotFound": 3, "ContactOptedOut": 2},
            "statsComplete": True,
        }
        invalid_lines = result.stderr.splitlines()
        assert [line.split(": ")[1] for line in invalid_lines] == [
            "contacts.csv line 602",  # the header is line 1: rows[600] is on line 602
            "contacts.csv line 607",
        ]
        assert all(line.split(": ")[2] == "contactId" for line in invalid_lines), invalid_lines
        in_workspace = commands.c.workspace_id == world.workspace_id
        assert scalar(world.engine, select(func.count()).where(in_workspace)) == 1205
        assert (
            scalar(
                world.engine,
                select(func.count()).where(conversations.c.workspace_id == world.workspace_id),
            )
            == 1200
        )

    def test_without_campaign_the_file_names_it_and_a_rerun_creates_nothing(
        self, stack: Stack, campaign_world: tuple[World, UUID], tmp_path: Path
    ):
        world, template = campaign_world
        csv = write_csv(tmp_path / "spring leads.csv", world.contacts(3))
        campaign = f"spring-leads-{hashlib.sha256(csv.read_bytes()).hexdigest()[:16]}"

        first = launch(stack, world, template, csv)
        again = launch(stack, world, template, csv, "--json")

        assert first.returncode == 0, first.stderr
        assert re.search(rf"campaign\s+[│|]\s+{campaign}\s", first.stdout), first.stdout
        assert re.search(r"created\s+[│|]\s+3\s", first.stdout), first.stdout
        assert re.search(r"invalid rows\s+[│|]\s+0\s", first.stdout), first.stdout
        assert summary(again) == {
            "campaignId": campaign,
            "rows": 3,
            "batches": 1,
            "accepted": 3,
            "invalidRows": 0,
            "finished": 3,
            "allFinished": True,
            "created": 3,
            "reused": 0,
            "rejected": {},
            "statsComplete": True,
        }
        in_workspace = commands.c.workspace_id == world.workspace_id
        assert scalar(world.engine, select(func.count()).where(in_workspace)) == 3


class TestInterruptedLaunch:
    """Killed between two chunks and run again: every contact is initiated exactly once."""

    def test_sigkill_mid_launch_then_the_same_command_completes_without_duplicates(
        self,
        stack: Stack,
        campaign_world: tuple[World, UUID],
        events: Redis,
        tmp_path: Path,
    ):
        world, template = campaign_world
        contacts = world.contacts(3000)
        csv = write_csv(tmp_path / "contacts.csv", contacts)
        options = ("--campaign", "killed", "--batch-size", "50")
        args, chunks = launch_args(world, template, csv, *options), 60

        with running(args, launch_env(stack, world), tmp_path / "first.log") as first:
            wait_until(
                lambda: batches_of(world) >= 1 or first.poll() is not None,
                60,
                "the first chunk to be accepted",
            )
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        sent_before_kill = batches_of(world)
        assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()
        assert 1 <= sent_before_kill < chunks

        result = launch(stack, world, template, csv, *options, "--json")

        assert summary(result) == {
            "campaignId": "killed",
            "rows": 3000,
            "batches": chunks,
            "accepted": 3000,
            "invalidRows": 0,
            "finished": 3000,
            "allFinished": True,
            "created": 3000,
            "reused": 0,
            "rejected": {},
            "statsComplete": True,
        }
        assert batches_of(world) == chunks
        assert per_contact_conversations(world) == Counter({1: 3000})
        assert per_contact_commands(world) == Counter({1: 3000})
        assert initiation_events(events, world) == Counter(
            {(str(c), "leadscout.conversation.created"): 1 for c in contacts}
        )


def batches_of(world: World) -> int:
    return scalar(
        world.engine, select(func.count()).where(batches.c.workspace_id == world.workspace_id)
    )


def per_contact_conversations(world: World) -> Counter[int]:
    """How many contacts have 1, 2, ... conversations."""
    query = (
        select(func.count())
        .where(conversations.c.workspace_id == world.workspace_id)
        .group_by(conversations.c.contact_id)
    )
    with world.engine.connect() as conn:
        return Counter(conn.execute(query).scalars())


def per_contact_commands(world: World) -> Counter[int]:
    """How many contacts have 1, 2, ... commands."""
    contact = commands.c.payload["request"]["contactId"].astext
    query = (
        select(func.count()).where(commands.c.workspace_id == world.workspace_id).group_by(contact)
    )
    with world.engine.connect() as conn:
        return Counter(conn.execute(query).scalars())


def initiation_events(redis: Redis, world: World) -> Counter[tuple[str, str]]:
    """(contactId, type) of the workspace's distinct initiation events on the stream."""
    distinct: dict[str, tuple[str, str]] = {}
    for _, fields in redis.xrange(STREAM):
        event = json.loads(fields[b"event"])
        if event["workspaceid"] == str(world.workspace_id):
            distinct[event["id"]] = (event["data"]["contactId"], event["type"])
    return Counter(distinct.values())
