"""The published language: request validation (SPEC 4.1), error codes (SPEC 4), JSON Schemas."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from schemas import errors
from schemas.api import InitiateOutboundRequest
from schemas.errors import ErrorCode
from schemas.export import JSON_DIR, rendered_schemas

CONTACT = str(uuid4())
TEMPLATE = str(uuid4())
EXPORT_HINT = "run `python -m schemas.export` and commit schemas/json/"


def minimal(**extra: Any) -> dict[str, Any]:
    return {"contactId": CONTACT, "template": {"templateId": TEMPLATE}, **extra}


def text(n: int = 1) -> dict[str, Any]:
    return {"type": "text", "text": "x" * n}


def parse(data: dict[str, Any]) -> InitiateOutboundRequest:
    """Validates as the API does: from the raw JSON text."""
    return InitiateOutboundRequest.model_validate_json(json.dumps(data))


def refusal(data: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """The (loc, type) of every validation error ``data`` raises."""
    with pytest.raises(ValidationError) as raised:
        parse(data)
    return [(tuple(e["loc"]), e["type"]) for e in raised.value.errors()]


FULL = {
    "contactId": CONTACT,
    "template": {"templateId": TEMPLATE, "parameters": ["Luis", "Ana"]},
    "additionalMessages": [
        {"type": "text", "text": "¿Te interesa una prueba de manejo?"},
        {
            "type": "media",
            "mediaUrl": "https://cdn.acme.test/suv.jpg",
            "mimeType": "image/jpeg",
            "caption": "El nuevo SUV",
        },
    ],
    "context": {
        "notes": ["Asked about the SUV"],
        "media": [{"url": "https://cdn.acme.test/q.pdf", "mimeType": "application/pdf"}],
    },
    "optIn": {"source": "landing", "nested": {"any": [1, None, "x"]}},
    "handoffOverride": {"userId": str(uuid4())},
    "brandId": str(uuid4()),
    "campaignId": "spring-promo",
    "providerChannelId": str(uuid4()),
    "forceSend": True,
}


class TestRequiredAndDefaults:
    """contactId and template.templateId are required; everything else has a default."""

    def test_minimal_request_gets_the_defaults(self) -> None:
        request = parse(minimal())

        assert request.contact_id == UUID(CONTACT)
        assert request.template.template_id == UUID(TEMPLATE)
        assert request.template.parameters == []
        assert request.follow_ups == []
        assert request.force_send is False
        assert (request.brand_id, request.campaign_id, request.provider_channel_id) == (
            None,
            None,
            None,
        )
        assert (request.context, request.opt_in, request.handoff_override) == (None, None, None)

    def test_missing_contact_id_is_refused(self) -> None:
        assert refusal({"template": {"templateId": TEMPLATE}}) == [(("contactId",), "missing")]

    def test_missing_template_id_is_refused(self) -> None:
        data = {"contactId": CONTACT, "template": {"parameters": []}}

        assert refusal(data) == [(("template", "templateId"), "missing")]

    def test_malformed_uuid_is_refused(self) -> None:
        assert refusal(minimal(contactId="not-a-uuid")) == [(("contactId",), "uuid_parsing")]

    def test_parameters_must_be_strings(self) -> None:
        data = {"contactId": CONTACT, "template": {"templateId": TEMPLATE, "parameters": [1]}}

        assert refusal(data) == [(("template", "parameters", 0), "string_type")]

    def test_force_send_must_be_a_boolean(self) -> None:
        assert refusal(minimal(forceSend="true")) == [(("forceSend",), "bool_type")]


class TestAdditionalMessages:
    """At most 5 additional messages, texts of at most 4096 characters."""

    def test_five_messages_are_accepted(self) -> None:
        assert len(parse(minimal(additionalMessages=[text()] * 5)).follow_ups) == 5

    def test_six_messages_are_refused(self) -> None:
        assert refusal(minimal(additionalMessages=[text()] * 6)) == [
            (("additionalMessages",), "too_long")
        ]

    def test_text_of_4096_characters_is_accepted(self) -> None:
        request = parse(minimal(additionalMessages=[text(4096)]))

        assert request.model_dump(mode="json")["additionalMessages"] == [text(4096)]

    def test_text_of_4097_characters_is_refused(self) -> None:
        assert refusal(minimal(additionalMessages=[text(4097)])) == [
            (("additionalMessages", 0, "text", "text"), "string_too_long")
        ]

    def test_media_caption_of_4097_characters_is_refused(self) -> None:
        media = {
            "type": "media",
            "mediaUrl": "https://cdn.acme.test/a.jpg",
            "mimeType": "image/jpeg",
            "caption": "x" * 4097,
        }

        assert refusal(minimal(additionalMessages=[media])) == [
            (("additionalMessages", 0, "media", "caption"), "string_too_long")
        ]

    def test_unknown_message_type_is_refused(self) -> None:
        errors_ = refusal(minimal(additionalMessages=[{"type": "audio", "text": "x"}]))

        assert errors_ == [(("additionalMessages", 0), "union_tag_invalid")]

    def test_media_requires_url_and_mime_type(self) -> None:
        errors_ = refusal(minimal(additionalMessages=[{"type": "media"}]))

        assert sorted(errors_) == [
            (("additionalMessages", 0, "media", "mediaUrl"), "missing"),
            (("additionalMessages", 0, "media", "mimeType"), "missing"),
        ]


class TestCampaignId:
    """campaignId is 1–128 characters of letters, digits, '.', '_', '-', ':'."""

    @pytest.mark.parametrize(
        "campaign_id",
        ["a", "spring-promo", "Q2.2024_es:MX-v1", "0", "x" * 128, "..::__--"],
    )
    def test_valid_campaign_id_is_accepted(self, campaign_id: str) -> None:
        assert parse(minimal(campaignId=campaign_id)).campaign_id == campaign_id

    @pytest.mark.parametrize(
        "campaign_id",
        ["", "x" * 129, "spring promo", "a/b", "promo!", "promoción", "abc\n", "a@b", "a+b"],
        ids=["empty", "129", "space", "slash", "bang", "accent", "newline", "at", "plus"],
    )
    def test_invalid_campaign_id_is_refused(self, campaign_id: str) -> None:
        [(loc, _)] = refusal(minimal(campaignId=campaign_id))

        assert loc == ("campaignId",)

    def test_null_campaign_id_means_none(self) -> None:
        assert parse(minimal(campaignId=None)).campaign_id is None


class TestUnknownFields:
    """Unknown members are refused at every level, except anywhere inside optIn."""

    @pytest.mark.parametrize(
        ("data", "loc"),
        [
            (minimal(extra=1), ("extra",)),
            (
                {"contactId": CONTACT, "template": {"templateId": TEMPLATE, "name": "x"}},
                ("template", "name"),
            ),
            (
                minimal(additionalMessages=[{**text(), "caption": "x"}]),
                ("additionalMessages", 0, "text", "caption"),
            ),
            (
                minimal(
                    additionalMessages=[
                        {
                            "type": "media",
                            "mediaUrl": "https://a.test/x.jpg",
                            "mimeType": "image/jpeg",
                            "text": "x",
                        }
                    ]
                ),
                ("additionalMessages", 0, "media", "text"),
            ),
            (minimal(context={"notes": [], "tags": []}), ("context", "tags")),
            (
                minimal(
                    context={
                        "media": [{"url": "https://a.test/x.pdf", "mimeType": "a/pdf", "size": 1}]
                    }
                ),
                ("context", "media", 0, "size"),
            ),
            (
                minimal(handoffOverride={"userId": str(uuid4()), "role": "admin"}),
                ("handoffOverride", "role"),
            ),
        ],
        ids=["top", "template", "text", "media", "context", "context-media", "handoff"],
    )
    def test_unknown_member_is_refused(self, data: dict[str, Any], loc: tuple[Any, ...]) -> None:
        assert refusal(data) == [(loc, "extra_forbidden")]

    def test_opt_in_accepts_any_json_object_verbatim(self) -> None:
        opt_in = {
            "anything": {"deeply": {"nested": [1, 2.5, None, True, "x", {"k": []}]}},
            "contact_id": "snake_case kept",
            "": "empty key",
        }

        request = parse(minimal(optIn=opt_in))

        assert request.opt_in == opt_in
        assert request.model_dump(mode="json")["optIn"] == opt_in

    @pytest.mark.parametrize("opt_in", [[1, 2], "yes", 1, True])
    def test_opt_in_must_be_an_object(self, opt_in: Any) -> None:
        [(loc, _)] = refusal(minimal(optIn=opt_in))

        assert loc == ("optIn",)


class TestCamelCase:
    """JSON goes in and comes out in camelCase."""

    def test_camel_case_json_round_trips_unchanged(self) -> None:
        request = parse(FULL)

        assert request.force_send is True
        assert request.handoff_override is not None
        assert str(request.handoff_override.user_id) == FULL["handoffOverride"]["userId"]
        assert request.model_dump(mode="json", exclude_unset=True) == FULL
        assert json.loads(request.model_dump_json(exclude_unset=True)) == FULL

    def test_output_uses_camel_case_member_names(self) -> None:
        dumped = parse(minimal()).model_dump(mode="json")

        assert set(dumped) == {
            "contactId",
            "template",
            "additionalMessages",
            "context",
            "optIn",
            "handoffOverride",
            "brandId",
            "campaignId",
            "providerChannelId",
            "forceSend",
        }
        assert set(dumped["template"]) == {"templateId", "parameters"}

    def test_snake_case_members_are_refused(self) -> None:
        data = {"contact_id": CONTACT, "template": {"template_id": TEMPLATE}, "force_send": True}

        with pytest.raises(ValidationError):
            parse(data)


# SPEC 4's table of codes, exactly as written there.
SPEC_STATUSES: dict[str, int] = {
    "Unauthorized": 401,
    "Forbidden": 403,
    "ValidationError": 422,
    "PayloadTooLarge": 413,
    "TemplateNotFound": 404,
    "ContactNotFound": 404,
    "BrandNotFound": 404,
    "ProviderChannelNotFound": 404,
    "HandoffUserNotFound": 404,
    "TemplateNotApproved": 422,
    "TemplateParametersMismatch": 422,
    "ContactOptedOut": 422,
    "ChannelNotEligible": 422,
    "NoWhatsAppChannel": 422,
    "NoProspectionAgent": 422,
    "HandoffUserInactive": 422,
    "ActiveConversationExists": 409,
    "AllProviderChannelsOccupied": 409,
    "ChannelDailyLimitReached": 429,
    "IdempotencyKeyReused": 422,
    "CommandNotFound": 404,
    "ConversationNotFound": 404,
    "BatchNotFound": 404,
    "ConversationClosed": 409,
    "ServiceUnavailable": 503,
}

# The codes a command may fail with (SPEC 4.1 checks and occupancy/quota).
BUSINESS_CODES = [
    "TemplateNotFound",
    "TemplateNotApproved",
    "TemplateParametersMismatch",
    "ContactNotFound",
    "ContactOptedOut",
    "BrandNotFound",
    "ProviderChannelNotFound",
    "ChannelNotEligible",
    "NoWhatsAppChannel",
    "NoProspectionAgent",
    "HandoffUserNotFound",
    "HandoffUserInactive",
    "ActiveConversationExists",
    "AllProviderChannelsOccupied",
    "ChannelDailyLimitReached",
]


class TestErrorCodes:
    """Every code of SPEC 4's table exists with its HTTP status; 4.1 codes are Rejections."""

    @pytest.mark.parametrize(("code", "status"), SPEC_STATUSES.items())
    def test_code_has_the_spec_status(self, code: str, status: int) -> None:
        assert ErrorCode(code).status == status

    def test_every_code_has_a_status_and_title(self) -> None:
        for code in ErrorCode:
            assert 400 <= code.status < 600
            assert code.title

    def test_business_codes_are_exactly_the_rejections(self) -> None:
        assert sorted(code.value for code in errors.REJECTIONS) == sorted(BUSINESS_CODES)

    @pytest.mark.parametrize("code", BUSINESS_CODES)
    def test_rejection_class_is_named_by_its_code(self, code: str) -> None:
        cls = getattr(errors, code)

        assert issubclass(cls, errors.Rejection)
        assert cls.code == ErrorCode(code)
        assert errors.REJECTIONS[ErrorCode(code)] is cls

    def test_problem_has_the_rfc_9457_members_and_extras_at_top_level(self) -> None:
        problem = errors.TemplateParametersMismatch(expected=2, got=1).as_problem()

        assert problem == {
            "type": "https://leadscout.dev/problems/TemplateParametersMismatch",
            "title": "Template parameters mismatch",
            "status": 422,
            "detail": "The number of parameters does not match the template's placeholders.",
            "code": "TemplateParametersMismatch",
            "expected": 2,
            "got": 1,
        }


class TestExportedJsonSchemas:
    """The JSON Schemas checked in under schemas/json/ match the models."""

    def test_checked_in_schema_files_are_current(self) -> None:
        rendered = rendered_schemas()
        on_disk = {path.name: path.read_text() for path in JSON_DIR.glob("*.json")}

        missing = sorted(set(rendered) - set(on_disk))
        stale = sorted(set(on_disk) - set(rendered))
        changed = sorted(n for n in set(rendered) & set(on_disk) if rendered[n] != on_disk[n])
        assert not (missing or stale or changed), (
            f"schemas/json/ is out of date (missing {missing}, not published {stale}, "
            f"changed {changed}): {EXPORT_HINT}"
        )

    def test_every_event_of_spec_6_is_published(self) -> None:
        assert {
            "ConversationCreated.schema.json",
            "ConversationReused.schema.json",
            "InitiationRejected.schema.json",
            "ConversationHandedOff.schema.json",
            "ConversationClosed.schema.json",
            "InitiateOutboundRequest.schema.json",
        } <= set(rendered_schemas())

    def test_request_schema_refuses_unknown_members(self) -> None:
        schema = json.loads(rendered_schemas()["InitiateOutboundRequest.schema.json"])

        assert schema["additionalProperties"] is False
        assert set(schema["required"]) == {"contactId", "template"}
