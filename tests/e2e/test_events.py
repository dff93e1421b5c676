"""SPEC 6: what each HTTP call puts on the Redis Stream, read back as CloudEvents JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
from redis import Redis
from sqlalchemy import Engine, func, select

from tests.e2e.support import STREAM, Api, Catalog, assert_problem, is_rfc3339, is_uuid
from tests.world import World, body
from worker.store.tables import outbox_writes

ENVELOPE = {
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "subject",
    "datacontenttype",
    "workspaceid",
    "data",
}
PHONE = "+5215598765432"


def stream_events(stream: Redis) -> list[dict[str, Any]]:
    """Every entry's ``event`` field, parsed; each entry must carry only that field."""
    entries = stream.xrange(STREAM)
    assert all(set(fields) == {b"event"} for _, fields in entries), entries
    return [json.loads(fields[b"event"]) for _, fields in entries]


def wait_for_events(
    stream: Redis, wanted: Callable[[dict[str, Any]], bool], timeout_s: float = 10
) -> list[dict[str, Any]]:
    """The stream's events that match ``wanted``, once at least one has arrived."""
    deadline = time.monotonic() + timeout_s
    while not (found := [e for e in stream_events(stream) if wanted(e)]):
        assert time.monotonic() < deadline, f"no such event in {stream_events(stream)}"
        time.sleep(0.05)
    return found


def the_event(stream: Redis, type_: str, subject: str) -> dict[str, Any]:
    """The single event of this type about this subject."""
    found = wait_for_events(stream, lambda e: (e["type"], e["subject"]) == (type_, subject))
    assert len(found) == 1, found
    return found[0]


def assert_envelope(event: dict[str, Any], world: World, type_: str, subject: str) -> None:
    """CloudEvents 1.0 attributes of SPEC 6, exactly these and no others."""
    assert set(event) == ENVELOPE, event
    assert is_uuid(event["id"]) and is_rfc3339(event["time"]), event
    assert {k: event[k] for k in ENVELOPE - {"id", "time", "data"}} == {
        "specversion": "1.0",
        "type": type_,
        "source": "leadscout-outbound",
        "subject": subject,
        "datacontenttype": "application/json",
        "workspaceid": str(world.workspace_id),
    }


def template_message(parameters: list[str]) -> dict[str, Any]:
    """The WhatsApp Cloud API body for the default template with these parameters."""
    return {
        "messaging_product": "whatsapp",
        "to": PHONE,
        "type": "template",
        "template": {
            "name": "welcome_v2",
            "language": {"code": "es_MX"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            ],
        },
    }


def initiation_data(catalog: Catalog, answer: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {
        "commandId": answer["commandId"],
        "conversationId": answer["conversation"]["id"],
        "contactId": str(catalog.contact),
        "channelId": str(catalog.channel),
        "agentId": str(catalog.agent),
        "brandId": None,
        "campaignId": None,
        "templateId": str(catalog.template),
        "followUpsCount": 0,
        "alreadyInitiated": False,
        "previousControl": None,
        "message": template_message(["Luis", "Ana"]),
    }
    return data | overrides


FOLLOW_UPS = [{"type": "text", "text": "¿Seguimos?"}, {"type": "text", "text": "Gracias"}]


class TestInitiationEvents:
    """Each initiation outcome reaches the stream as one CloudEvent with SPEC 6's data."""

    def test_created(self, api: Api, world, catalog, events):
        """A fresh conversation emits leadscout.conversation.created about it."""
        brand = world.brand()
        channel = world.channel(catalog.agent, brandId=brand, priority=-1)
        request = body(
            catalog.contact,
            catalog.template,
            campaignId="spring-promo",
            additionalMessages=FOLLOW_UPS,
        )
        answer = api.created(request)

        event = the_event(events, "leadscout.conversation.created", answer["conversation"]["id"])

        assert_envelope(
            event, world, "leadscout.conversation.created", answer["conversation"]["id"]
        )
        assert event["data"] == initiation_data(
            catalog,
            answer,
            channelId=str(channel),
            brandId=str(brand),
            campaignId="spring-promo",
            followUpsCount=2,
        )

    def test_reused(self, api: Api, world, catalog, events):
        """A forceSend reuse emits leadscout.conversation.reused with the previous control."""
        first = api.created(body(catalog.contact, catalog.template, campaignId="c1"))
        conversation_id = first["conversation"]["id"]
        assert api.handoff(conversation_id, {"userId": str(world.user())}).status_code == 200
        request = body(
            catalog.contact,
            catalog.template,
            parameters=["Luisa", "Eva"],
            forceSend=True,
            additionalMessages=FOLLOW_UPS[:1],
        )
        answer = api.created(request)

        event = the_event(events, "leadscout.conversation.reused", conversation_id)

        assert_envelope(event, world, "leadscout.conversation.reused", conversation_id)
        assert event["data"] == initiation_data(
            catalog,
            answer,
            followUpsCount=1,
            alreadyInitiated=True,
            previousControl="human",
            message=template_message(["Luisa", "Eva"]),
        )

    def test_rejected(self, api: Api, world, catalog, events):
        """A rejection emits leadscout.initiation.rejected about the command, with its code."""
        contact = world.contact(opted_out=True)
        response = api.initiate(
            body(contact, catalog.template, campaignId="c1"),
            headers={"Prefer": "respond-async"},
        )
        command_id = response.json()["commandId"]

        event = the_event(events, "leadscout.initiation.rejected", command_id)

        assert_envelope(event, world, "leadscout.initiation.rejected", command_id)
        assert event["data"] == {
            "commandId": command_id,
            "contactId": str(contact),
            "campaignId": "c1",
            "code": "ContactOptedOut",
        }

    def test_template_without_placeholders_has_no_components(self, api, world, catalog, events):
        """The WhatsApp payload omits components for a template without placeholders."""
        template = world.template(body="Hola, soy Scout de Acme")
        answer = api.created(body(catalog.contact, template, parameters=[]))

        event = the_event(events, "leadscout.conversation.created", answer["conversation"]["id"])

        assert event["data"]["message"] == {
            "messaging_product": "whatsapp",
            "to": PHONE,
            "type": "template",
            "template": {"name": "welcome_v2", "language": {"code": "es_MX"}},
        }

    def test_idempotent_replay_emits_no_second_event(self, api, catalog, events, engine):
        """A replay with the same Idempotency-Key emits nothing: one event for the command."""
        request = body(catalog.contact, catalog.template)
        key = {"Idempotency-Key": str(uuid4())}
        first = api.initiate(request, headers=key).json()
        api.initiate(request, headers=key)
        all_relayed(engine)

        of_command = [
            e for e in stream_events(events) if e["data"].get("commandId") == first["commandId"]
        ]
        assert [e["type"] for e in of_command] == ["leadscout.conversation.created"]


class TestLifecycleEvents:
    """Handoff and close each emit one event; a repeated close emits none."""

    @pytest.fixture
    def conversation_id(self, api: Api, catalog, events) -> str:
        return str(api.created(body(catalog.contact, catalog.template))["conversation"]["id"])

    def test_handed_off(self, api, world, catalog, conversation_id, events):
        """A handoff emits leadscout.conversation.handed_off with the user and previous control."""
        user = world.user()
        assert api.handoff(conversation_id, {"userId": str(user)}).status_code == 200

        event = the_event(events, "leadscout.conversation.handed_off", conversation_id)

        assert_envelope(event, world, "leadscout.conversation.handed_off", conversation_id)
        assert event["data"] == {
            "conversationId": conversation_id,
            "contactId": str(catalog.contact),
            "channelId": str(catalog.channel),
            "userId": str(user),
            "previousControl": "ai",
        }

    def test_refused_handoff_emits_nothing(
        self, api, world, catalog, conversation_id, events, engine
    ):
        """A handoff refused for an inactive user emits no event."""
        inactive = world.user(active=False)
        assert_problem(
            api.handoff(conversation_id, {"userId": str(inactive)}), 422, "HandoffUserInactive"
        )
        assert api.close(conversation_id).status_code == 200

        all_relayed(engine)

        types = [e["type"] for e in stream_events(events) if e["subject"] == conversation_id]
        assert "leadscout.conversation.handed_off" not in types
        assert types.count("leadscout.conversation.closed") == 1

    def test_closed_once(self, api, world, catalog, conversation_id, events, engine):
        """A close emits leadscout.conversation.closed; closing again emits nothing more."""
        assert api.close(conversation_id).status_code == 200
        assert api.close(conversation_id).status_code == 200
        all_relayed(engine)

        closed = [
            e
            for e in stream_events(events)
            if e["subject"] == conversation_id and e["type"] == "leadscout.conversation.closed"
        ]
        assert len(closed) == 1
        event = closed[0]

        assert_envelope(event, world, "leadscout.conversation.closed", conversation_id)
        assert event["data"] == {
            "conversationId": conversation_id,
            "contactId": str(catalog.contact),
            "channelId": str(catalog.channel),
        }

    def test_event_ids_are_unique(self, api, world, conversation_id, events):
        """Created, handed-off and closed events of one conversation have distinct ids."""
        api.handoff(conversation_id, {"userId": str(world.user())})
        api.close(conversation_id)

        the_event(events, "leadscout.conversation.closed", conversation_id)

        ids = [e["id"] for e in stream_events(events) if e["subject"] == conversation_id]
        assert len(ids) == len(set(ids)) == 3


def all_relayed(engine: Engine, timeout_s: float = 15) -> None:
    """Waits until every outbox row reached the stream: nothing more can arrive after."""
    unpublished = (
        select(func.count())
        .select_from(outbox_writes)
        .where(outbox_writes.c.published_at.is_(None))
    )
    deadline = time.monotonic() + timeout_s
    with engine.connect() as conn:
        while conn.execute(unpublished).scalar_one():
            assert time.monotonic() < deadline, "outbox rows still unpublished"
            time.sleep(0.05)
            conn.rollback()
