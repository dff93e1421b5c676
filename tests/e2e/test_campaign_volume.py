"""Correctness at volume (issue 7): a 5,000-lead campaign through the batch API, the chunked
worker path (two processes), the relay and the reporter, counted four ways."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from typing import Any
from uuid import UUID, uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select

from tests.e2e.support import STREAM, Api
from tests.world import World
from worker.store.tables import commands, conversations

LEADS = 5_000
OPTED_OUT, UNKNOWN, DUPLICATES, INVALID = 200, 100, 100, 50
# Three channels whose daily limits hold 4,500 fresh conversations: 4,600 distinct reachable
# leads plus 100 repeated ones ask for 4,700, so exactly 200 are refused for quota.
LIMITS = (1_500, 1_500, 1_500)
WAIT_S = 180


def campaign_items(contacts: list[UUID]) -> list[dict[str, Any]]:
    """5,050 items in a shuffled order: 4,600 reachable leads, 200 opted-out, 100 unknown,
    100 repeated, and 50 invalid ones."""
    opted_out, reachable = contacts[:OPTED_OUT], contacts[OPTED_OUT:]
    leads = [*reachable, *opted_out, *(uuid4() for _ in range(UNKNOWN))]
    leads += random.Random(7).sample(reachable, DUPLICATES)
    items: list[dict[str, Any]] = [{"contactId": str(lead)} for lead in leads]
    items += [{"contactId": "not-a-uuid"} for _ in range(INVALID // 2)]
    items += [{"contactId": str(uuid4()), "unknownField": 1} for _ in range(INVALID // 2)]
    random.Random(11).shuffle(items)
    return items


def stream_events(redis: Redis) -> list[dict[str, Any]]:
    return [json.loads(fields[b"event"]) for _, fields in redis.xrange(STREAM)]


def wait_for(what: str, check: Any, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)
    return result


@pytest.mark.slow
class TestFiveThousandLeadCampaign:
    def test_exact_counts_in_batch_status_database_stats_and_stream(
        self, api: Api, world: World, engine: Engine, events: Redis
    ):
        agent = world.agent()
        template = world.template(body="Hola {{1}}")
        channels = [world.channel(agent, dailyLimit=limit) for limit in LIMITS]
        contacts = world.contacts(LEADS - UNKNOWN - DUPLICATES, OPTED_OUT)
        items = campaign_items(contacts)
        assert len(items) == LEADS + INVALID
        campaign = "volume-test"
        defaults = {"template": {"templateId": str(template), "parameters": ["Luis"]}}

        answer = api.post(
            "/outbound/batch", {"campaignId": campaign, "defaults": defaults, "items": items}
        )

        assert answer.status_code == 202, answer.text
        accepted = LEADS
        batch = answer.json()
        assert batch["accepted"] == accepted
        invalid_at = sorted(i for i, item in enumerate(items) if _invalid(item))
        assert [entry["index"] for entry in batch["invalid"]] == invalid_at

        status = wait_for(
            "every command to finish",
            lambda: _finished(api.get(f"/batches/{batch['batchId']}").json(), accepted),
        )
        quota_refusals = status["errors"].get("ChannelDailyLimitReached", 0) + status["errors"].get(
            "AllProviderChannelsOccupied", 0
        )
        assert status["counts"] == {
            "accepted": 0,
            "processing": 0,
            "succeeded": sum(LIMITS),
            "failed": accepted - sum(LIMITS),
        }
        assert status["errors"]["ContactOptedOut"] == OPTED_OUT
        assert status["errors"]["ContactNotFound"] == UNKNOWN
        assert quota_refusals == accepted - sum(LIMITS) - OPTED_OUT - UNKNOWN == 200
        assert set(status["errors"]) <= {
            "ContactOptedOut",
            "ContactNotFound",
            "ChannelDailyLimitReached",
            "AllProviderChannelsOccupied",
        }

        with engine.connect() as conn:
            per_channel = dict(
                conn.execute(
                    select(conversations.c.channel_id, func.count())
                    .where(conversations.c.campaign_id == campaign)
                    .group_by(conversations.c.channel_id)
                ).all()
            )
            doubled = conn.execute(
                select(conversations.c.channel_id, conversations.c.contact_id)
                .where(conversations.c.status == "active")
                .group_by(conversations.c.channel_id, conversations.c.contact_id)
                .having(func.count() > 1)
            ).all()
            command_count = conn.execute(
                select(func.count()).where(commands.c.batch_id == UUID(batch["batchId"]))
            ).scalar_one()
        assert per_channel == dict(zip(channels, LIMITS, strict=True))
        assert doubled == []
        assert command_count == accepted

        stats = wait_for(
            "the reporter to count every event",
            lambda: _counted(api.get(f"/campaigns/{campaign}/stats").json(), accepted),
        )
        assert (stats["created"], stats["reused"]) == (sum(LIMITS), 0)
        assert stats["rejected"] == status["errors"]
        assert stats["byChannel"] == {
            str(channel): {"created": limit, "reused": 0}
            for channel, limit in zip(channels, LIMITS, strict=True)
        }

        seen = wait_for(
            "one event per command on the stream",
            lambda: (
                (found := _by_command(stream_events(events))) and len(found) == accepted and found
            ),
        )
        assert Counter(event["type"] for event in seen.values()) == {
            "leadscout.conversation.created": sum(LIMITS),
            "leadscout.initiation.rejected": accepted - sum(LIMITS),
        }
        assert {event["data"]["campaignId"] for event in seen.values()} == {campaign}


def _invalid(item: dict[str, Any]) -> bool:
    return item["contactId"] == "not-a-uuid" or "unknownField" in item


def _finished(status: dict[str, Any], accepted: int) -> dict[str, Any] | None:
    counts = status["counts"]
    return status if counts["succeeded"] + counts["failed"] == accepted else None


def _counted(stats: dict[str, Any], accepted: int) -> dict[str, Any] | None:
    total = stats["created"] + stats["reused"] + sum(stats["rejected"].values())
    return stats if total == accepted else None


def _by_command(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The stream is at-least-once: one command's event may appear twice, with one id."""
    by_command: dict[str, dict[str, Any]] = {}
    for event in events:
        previous = by_command.setdefault(event["data"]["commandId"], event)
        assert previous["id"] == event["id"], "two different events for one command"
    return by_command
