"""SPEC 6's envelope as subscribers read it: every event type through the CloudEvents SDK."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from redis import Redis

from tests.e2e.support import STREAM, Api, Catalog, is_uuid
from tests.world import World, body

ASYNC = {"Prefer": "respond-async"}


def read_structured(raw: bytes) -> CloudEvent:
    """The SDK's structured-mode JSON reader, with the CloudEvents 1.0 event class."""
    event = JSONFormat().read(CloudEvent, raw)
    assert isinstance(event, CloudEvent)
    return event


def events_by_type(
    stream: Redis, workspace_id: str, wanted: int, timeout_s: float = 15
) -> dict[str, CloudEvent]:
    """Type → the workspace's one event of that type, once ``wanted`` distinct ids arrived."""
    deadline = time.monotonic() + timeout_s
    while len(found := workspace_events(stream, workspace_id)) < wanted:
        assert time.monotonic() < deadline, f"{len(found)} of {wanted} events arrived"
        time.sleep(0.05)
    by_type = {event.get_type(): event for event in found.values()}
    assert len(by_type) == len(found) == wanted, sorted(e.get_type() for e in found.values())
    return by_type


def workspace_events(stream: Redis, workspace_id: str) -> dict[str, CloudEvent]:
    """Id → event, for this workspace (the stream is at-least-once: subscribers dedupe by id)."""
    parsed = [read_structured(fields[b"event"]) for _, fields in stream.xrange(STREAM)]
    return {e.get_id(): e for e in parsed if e.get_extension("workspaceid") == workspace_id}


def produce_every_type(api: Api, world: World, catalog: Catalog) -> dict[str, str]:
    """A creation, a reuse, a handoff, a close and a rejection; the ids they were about."""
    created = api.created(body(catalog.contact, catalog.template))
    conversation = created["conversation"]["id"]
    reused = api.created(body(catalog.contact, catalog.template, forceSend=True))
    user = str(world.user())
    assert api.handoff(conversation, {"userId": user}).status_code == 200
    assert api.close(conversation).status_code == 200
    opted_out = str(world.contact(opted_out=True))
    rejected = api.initiate(body(opted_out, catalog.template), headers=ASYNC).json()
    return {
        "conversation": conversation,
        "created": created["commandId"],
        "reused": reused["commandId"],
        "rejected": rejected["commandId"],
        "user": user,
        "opted_out": opted_out,
    }


def summary(event: CloudEvent) -> tuple[str | None, dict[str, Any]]:
    """(subject, data), keeping of an initiation's data the members that tell them apart."""
    data = event.get_data()
    assert isinstance(data, dict), data
    if event.get_type() in ("leadscout.conversation.created", "leadscout.conversation.reused"):
        assert set(data) == INITIATION_MEMBERS, data
        data = {key: data[key] for key in ("commandId", "alreadyInitiated", "previousControl")}
    return event.get_subject(), data


INITIATION_MEMBERS = {
    "commandId",
    "conversationId",
    "contactId",
    "channelId",
    "agentId",
    "brandId",
    "campaignId",
    "templateId",
    "followUpsCount",
    "alreadyInitiated",
    "previousControl",
    "message",
}


class TestCloudEventsSdk:
    """Each of the five event types parses as a CloudEvents 1.0 event with SPEC 6's content."""

    def test_every_event_type_reads_back_through_the_sdk(
        self, api: Api, world: World, catalog: Catalog, events: Redis
    ):
        """The SDK reads all five with SPEC 6's attributes, subject and data."""
        started = datetime.now(UTC) - timedelta(seconds=1)
        made = produce_every_type(api, world, catalog)

        by_type = events_by_type(events, str(world.workspace_id), wanted=5)

        conversation = made["conversation"]
        channel, contact = str(catalog.channel), str(catalog.contact)
        assert {type_: summary(event) for type_, event in by_type.items()} == {
            "leadscout.conversation.created": (
                conversation,
                {"commandId": made["created"], "alreadyInitiated": False, "previousControl": None},
            ),
            "leadscout.conversation.reused": (
                conversation,
                {"commandId": made["reused"], "alreadyInitiated": True, "previousControl": "ai"},
            ),
            "leadscout.conversation.handed_off": (
                conversation,
                {
                    "conversationId": conversation,
                    "contactId": contact,
                    "channelId": channel,
                    "userId": made["user"],
                    "previousControl": "ai",
                },
            ),
            "leadscout.conversation.closed": (
                conversation,
                {"conversationId": conversation, "contactId": contact, "channelId": channel},
            ),
            "leadscout.initiation.rejected": (
                made["rejected"],
                {
                    "commandId": made["rejected"],
                    "contactId": made["opted_out"],
                    "campaignId": None,
                    "code": "ContactOptedOut",
                },
            ),
        }
        for event in by_type.values():
            assert_envelope(event, str(world.workspace_id), started)


def assert_envelope(event: CloudEvent, workspace_id: str, started: datetime) -> None:
    """The attributes every event shares: SPEC 6's fixed values, a UUID id, a recent time."""
    assert (
        event.get_specversion(),
        event.get_source(),
        event.get_datacontenttype(),
        event.get_extension("workspaceid"),
    ) == ("1.0", "leadscout-outbound", "application/json", workspace_id)
    assert is_uuid(event.get_id()), event.get_id()
    time_ = event.get_time()
    assert time_ is not None and started <= time_ <= datetime.now(UTC), time_
