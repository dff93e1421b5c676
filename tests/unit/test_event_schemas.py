"""SPEC 6: the exported event JSON Schemas describe the events a subscriber receives."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from schemas.api import InitiateOutboundRequest
from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from schemas.events import ConversationCreated, ConversationReused, InitiationRejected
from schemas.export import JSON_DIR
from worker.events import initiation_event, rejection_event
from worker.model import Channel, Contact, Template
from worker.rules import Eligible
from worker.store.outbox import Written

WORKSPACE = UUID(int=0x3)
CONTACT = Contact(UUID(int=0xC0), "Luis", "+5215598765432", opted_out=False)
CHANNEL = Channel(UUID(int=0xC4), "whatsapp", True, None, UUID(int=0xA6), None, 1000, 0)
CONVERSATION = {
    "id": UUID(int=0x1000),
    "channel_id": CHANNEL.id,
    "agent_id": CHANNEL.agent_id,
    "brand_id": None,
}
ENVELOPE = ["specversion", "id", "type", "source", "time", "subject", "datacontenttype"]
ENVELOPE_REQUIRED = {*ENVELOPE, "workspaceid", "data"}
MESSAGE_PARTS = {
    "WhatsAppTemplateMessage": {"messaging_product", "to", "type", "template"},
    "TemplatePayload": {"name", "language"},
    "TemplateLanguage": {"code"},
    "BodyComponent": {"type", "parameters"},
    "TextParameter": {"type", "text"},
}
EVENT_TYPES = {
    "ConversationCreated": "leadscout.conversation.created",
    "ConversationReused": "leadscout.conversation.reused",
    "InitiationRejected": "leadscout.initiation.rejected",
    "ConversationHandedOff": "leadscout.conversation.handed_off",
    "ConversationClosed": "leadscout.conversation.closed",
}


def schema_of(name: str) -> dict[str, Any]:
    """The checked-in schema file a subscriber would use."""
    return dict(json.loads((JSON_DIR / f"{name}.schema.json").read_text()))


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(schema_of(name), format_checker=FormatChecker())


def command(**request: Any) -> InitiateOutbound:
    body = {"contactId": str(CONTACT.id), "template": {"templateId": str(UUID(int=0x7E))}}
    return InitiateOutbound(
        command_id=UUID(int=0xC3),
        workspace_id=WORKSPACE,
        request=InitiateOutboundRequest.model_validate(body | request),
    )


def initiation(previous_control: str | None, template_body: str) -> dict[str, Any]:
    """A created (no previous control) or reused event, as the worker builds and sends it."""
    template = Template(
        UUID(int=0x7E), "welcome_v2", "es_MX", "MARKETING", "APPROVED", template_body
    )
    parameters = ["Luis", "Ana"] if "{{" in template_body else []
    eligible = Eligible(template, CONTACT, (CHANNEL,), explicit_channel=False)
    cmd = command(template={"templateId": str(template.id), "parameters": parameters})
    return as_sent(initiation_event(cmd, eligible, CONVERSATION, previous_control))


def as_sent(event: Written) -> dict[str, Any]:
    """The event as its outbox row and stream entry carry it (outbox.add_many's JSON)."""
    return dict(json.loads(event.json))


def lifecycle_event(name: str) -> dict[str, Any]:
    """A handed-off or closed event as worker.lifecycle writes it (that module needs a database)."""
    data: dict[str, Any] = {
        "conversationId": str(CONVERSATION["id"]),
        "contactId": str(CONTACT.id),
        "channelId": str(CHANNEL.id),
    }
    if name == "ConversationHandedOff":
        data |= {"userId": str(UUID(int=0x05E4)), "previousControl": "ai"}
    return {
        "specversion": "1.0",
        "id": str(UUID(int=0xE1)),
        "type": EVENT_TYPES[name],
        "source": "leadscout-outbound",
        "time": datetime.now(UTC).isoformat(),
        "subject": str(CONVERSATION["id"]),
        "datacontenttype": "application/json",
        "workspaceid": str(WORKSPACE),
        "data": data,
    }


def real_events() -> dict[str, dict[str, Any]]:
    """One event of each type, keyed by its schema's name."""
    rejected = rejection_event(command(campaignId="spring"), ErrorCode.CONTACT_OPTED_OUT)
    return {
        "ConversationCreated": initiation(None, "Hola {{1}}, soy {{2}}"),
        "ConversationReused": initiation("human", "Hola {{1}}, soy {{2}}"),
        "InitiationRejected": as_sent(rejected),
        "ConversationHandedOff": lifecycle_event("ConversationHandedOff"),
        "ConversationClosed": lifecycle_event("ConversationClosed"),
    }


def errors_of(name: str, event: dict[str, Any]) -> list[str]:
    return [error.message for error in validator(name).iter_errors(event)]


def invalid_at(name: str, event: dict[str, Any]) -> set[tuple[Any, ...]]:
    """Where in the event the schema finds it invalid."""
    return {tuple(error.absolute_path) for error in validator(name).iter_errors(event)}


def without(event: dict[str, Any], *path: Any) -> dict[str, Any]:
    """A deep copy of the event with the member at ``path`` removed."""
    changed = copy.deepcopy(event)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return changed


class TestRealEventsValidate:
    """Every event the service builds is valid against its own exported schema."""

    @pytest.mark.parametrize("name", list(EVENT_TYPES))
    def test_event_is_valid(self, name: str) -> None:
        assert errors_of(name, real_events()[name]) == []

    def test_template_without_placeholders_is_valid_without_components(self) -> None:
        event = initiation(None, "Hola, somos Acme")

        assert "components" not in event["data"]["message"]["template"]
        assert errors_of("ConversationCreated", event) == []


class TestBuiltAsTheModelsWriteThem:
    """worker.events skips the models for speed: what it writes must be exactly what the
    models write for the same event (members, their order, and every value's format)."""

    @pytest.mark.parametrize("parameters", [[], ["Luis", "Ana"]])
    @pytest.mark.parametrize("previous_control", [None, "ai", "human"])
    @pytest.mark.parametrize("brand_id", [None, UUID(int=0xB1)])
    @pytest.mark.parametrize(
        "extra",
        [{}, {"campaignId": "spring", "additionalMessages": [{"type": "text", "text": "hi"}]}],
    )
    def test_initiation_events(
        self,
        parameters: list[str],
        previous_control: str | None,
        brand_id: UUID | None,
        extra: dict[str, Any],
    ) -> None:
        body = "Hola {{1}}, soy {{2}}" if parameters else "Hola"
        template = Template(UUID(int=0x7E), "welcome_v2", "es_MX", "MARKETING", "APPROVED", body)
        eligible = Eligible(template, CONTACT, (CHANNEL,), explicit_channel=False)
        cmd = command(template={"templateId": str(template.id), "parameters": parameters}, **extra)
        conversation = CONVERSATION | {"brand_id": brand_id}
        event = initiation_event(cmd, eligible, conversation, previous_control)

        model = ConversationCreated if previous_control is None else ConversationReused
        assert event.type == model.model_fields["type"].default
        assert (event.id, event.workspace_id) == (UUID(as_sent(event)["id"]), WORKSPACE)
        assert model.model_validate_json(event.json).model_dump_json().encode() == event.json

    @pytest.mark.parametrize("campaign_id", [None, "spring"])
    @pytest.mark.parametrize("code", [ErrorCode.CONTACT_OPTED_OUT, ErrorCode.TEMPLATE_NOT_FOUND])
    def test_rejection_events(self, campaign_id: str | None, code: ErrorCode) -> None:
        event = rejection_event(command(campaignId=campaign_id), code)

        assert event.type == "leadscout.initiation.rejected"
        assert as_sent(event)["data"]["code"] == code.value
        assert InitiationRejected.model_validate_json(event.json).model_dump_json().encode() == (
            event.json
        )


class TestEnvelopeSchema:
    """Each envelope requires every CloudEvents attribute SPEC 6 lists, with its fixed values."""

    @pytest.mark.parametrize("name", list(EVENT_TYPES))
    def test_every_attribute_is_required(self, name: str) -> None:
        assert set(schema_of(name)["required"]) == ENVELOPE_REQUIRED

    @pytest.mark.parametrize("name", list(EVENT_TYPES))
    def test_fixed_attributes_are_constants(self, name: str) -> None:
        properties = schema_of(name)["properties"]

        assert {k: properties[k]["const"] for k in ("specversion", "type", "source")} == {
            "specversion": "1.0",
            "type": EVENT_TYPES[name],
            "source": "leadscout-outbound",
        }
        assert properties["datacontenttype"]["const"] == "application/json"

    @pytest.mark.parametrize("name", list(EVENT_TYPES))
    @pytest.mark.parametrize("attribute", ENVELOPE)
    def test_an_event_missing_an_attribute_is_invalid(self, name: str, attribute: str) -> None:
        event = without(real_events()[name], attribute)

        assert errors_of(name, event) == [f"'{attribute}' is a required property"]

    def test_another_events_type_is_invalid(self) -> None:
        event = real_events()["ConversationCreated"] | {"type": EVENT_TYPES["ConversationReused"]}

        assert invalid_at("ConversationCreated", event) == {("type",)}


class TestPreviousControlSchema:
    """created carries previousControl null; reused carries the control it took over."""

    def test_created_allows_only_null(self) -> None:
        data = schema_of("ConversationCreated")["$defs"]["CreatedData"]["properties"]

        assert data["previousControl"]["type"] == "null"
        assert data["alreadyInitiated"]["const"] is False

    def test_reused_allows_only_ai_or_human(self) -> None:
        data = schema_of("ConversationReused")["$defs"]["ReusedData"]["properties"]

        assert (data["previousControl"]["type"], data["previousControl"]["enum"]) == (
            "string",
            ["ai", "human"],
        )
        assert data["alreadyInitiated"]["const"] is True

    @pytest.mark.parametrize(
        ("name", "control"),
        [
            ("ConversationCreated", "ai"),
            ("ConversationCreated", "human"),
            ("ConversationReused", None),
        ],
    )
    def test_the_other_events_previous_control_is_invalid(self, name: str, control: Any) -> None:
        event = real_events()[name]
        event["data"]["previousControl"] = control

        assert invalid_at(name, event) == {("data", "previousControl")}


class TestWhatsAppMessageSchema:
    """data.message is described down to each text parameter, as the Cloud API expects it."""

    @pytest.fixture
    def defs(self) -> dict[str, Any]:
        return dict(schema_of("ConversationCreated")["$defs"])

    def test_required_members_at_each_level(self, defs: dict[str, Any]) -> None:
        required = {name: set(defs[name]["required"]) for name in MESSAGE_PARTS}

        assert required == MESSAGE_PARTS

    def test_template_payload_describes_its_members(self, defs: dict[str, Any]) -> None:
        template = defs["TemplatePayload"]

        assert (set(template["properties"]), template["additionalProperties"]) == (
            {"name", "language", "components"},
            False,
        )
        assert template["properties"]["components"] == {
            "items": {"$ref": "#/$defs/BodyComponent"},
            "minItems": 1,
            "title": "Components",
            "type": "array",
        }

    def test_fixed_members_are_constants(self, defs: dict[str, Any]) -> None:
        constants = {
            (part, member): defs[part]["properties"][member]["const"]
            for part, member in [
                ("WhatsAppTemplateMessage", "messaging_product"),
                ("WhatsAppTemplateMessage", "type"),
                ("BodyComponent", "type"),
                ("TextParameter", "type"),
            ]
        }

        assert list(constants.values()) == ["whatsapp", "template", "body", "text"]

    @pytest.mark.parametrize(
        "path",
        [
            ("message", "messaging_product"),
            ("message", "type"),
            ("message", "template", "name"),
            ("message", "template", "language"),
            ("message", "template", "components", 0, "type"),
            ("message", "template", "components", 0, "parameters", 1, "type"),
            ("message", "template", "components", 0, "parameters", 1, "text"),
        ],
    )
    def test_a_message_missing_a_member_is_invalid(self, path: tuple[Any, ...]) -> None:
        event = without(real_events()["ConversationCreated"], "data", *path)

        assert errors_of("ConversationCreated", event) == [f"'{path[-1]}' is a required property"]

    def test_empty_components_are_invalid(self) -> None:
        event = real_events()["ConversationCreated"]
        event["data"]["message"]["template"]["components"] = []

        assert invalid_at("ConversationCreated", event) == {
            ("data", "message", "template", "components")
        }
