"""``leadscout events tail``: one line per event on the stream, for people watching it."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from redis import Redis

BLOCK_MS = 5000

# What each event type adds to its line: (label, key in ``data``).
SUMMARIES: dict[str, tuple[tuple[str, str], ...]] = {
    "leadscout.conversation.created": (
        ("conversation", "conversationId"),
        ("channel", "channelId"),
        ("campaign", "campaignId"),
    ),
    "leadscout.conversation.reused": (
        ("conversation", "conversationId"),
        ("channel", "channelId"),
        ("campaign", "campaignId"),
        ("previous", "previousControl"),
    ),
    "leadscout.initiation.rejected": (
        ("code", "code"),
        ("contact", "contactId"),
        ("campaign", "campaignId"),
    ),
    "leadscout.conversation.handed_off": (("user", "userId"), ("previous", "previousControl")),
    "leadscout.conversation.closed": (("contact", "contactId"), ("channel", "channelId")),
}


def tail(redis_url: str, stream: str, from_start: bool = False) -> None:
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        _follow(redis, stream, "0-0" if from_start else _newest_id(redis, stream))
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        # The reader went away (``| head``): silence the flush Python attempts at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _newest_id(redis: Redis, stream: str) -> str:
    """A concrete id rather than ``$``, so nothing added between two XREADs is skipped."""
    newest = redis.xrevrange(stream, count=1)
    return str(newest[0][0]) if newest else "0-0"


def _follow(redis: Redis, stream: str, last_id: str) -> None:
    while True:
        for _, entries in redis.xread({stream: last_id}, count=100, block=BLOCK_MS) or []:
            for entry_id, fields in entries:
                print(line(fields.get("event", "")), flush=True)
                last_id = entry_id


def line(raw: str) -> str:
    """``<time> <type> <subject> <workspaceid>`` and a summary of ``data``."""
    try:
        event = json.loads(raw)
    except ValueError:
        return f"? unreadable event {raw[:80]!r}"
    head = " ".join(str(event.get(key, "?")) for key in ("time", "type", "subject", "workspaceid"))
    return " ".join([head, *_summary(event.get("type"), event.get("data") or {})])


def _summary(event_type: Any, data: dict[str, Any]) -> list[str]:
    pairs = SUMMARIES.get(event_type, ())
    return [f"{label}={data[key]}" for label, key in pairs if data.get(key) is not None]
