"""SPEC 4.3's items: defaults deep-merged with each item, the batch's campaignId, as sent."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest
from pydantic import ValidationError

from api_shim.batch_intake import sort_items
from schemas.api import InitiateOutboundRequest
from schemas.batches import (
    MAX_BATCH_ITEMS,
    BatchItem,
    InitiateOutboundBatchRequest,
    RequestDefaults,
    deep_merge,
)
from schemas.commands import InitiateOutbound

CONTACT = str(UUID(int=0xC0))
TEMPLATE = str(UUID(int=0x7E))
WORKSPACE = UUID(int=0x5)
TEXT = {"type": "text", "text": "Hola"}
MEDIA = {"type": "media", "mediaUrl": "https://cdn.acme.test/a.jpg", "mimeType": "image/jpeg"}


def batch(items: list[Any], defaults: Any = None, **extra: Any) -> InitiateOutboundBatchRequest:
    body: dict[str, Any] = {"campaignId": "spring", "items": items, **extra}
    if defaults is not None:
        body["defaults"] = defaults
    return InitiateOutboundBatchRequest.model_validate(body)


def refusal(body: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as refused:
        InitiateOutboundBatchRequest.model_validate(body)
    return [(e["loc"], e["type"]) for e in refused.value.errors()]


def payload(request: InitiateOutboundRequest) -> dict[str, Any]:
    """The request as the command row and the Celery message carry it."""
    command = InitiateOutbound(command_id=UUID(int=1), workspace_id=WORKSPACE, request=request)
    return dict(command.to_message()["request"])


class TestDeepMerge:
    """Objects merge member by member, at any depth; lists and scalars replace."""

    def test_objects_merge_recursively(self) -> None:
        base = {"a": {"b": 1, "c": {"d": 2}}, "keep": True}
        assert deep_merge(base, {"a": {"c": {"e": 3}}}) == {
            "a": {"b": 1, "c": {"d": 2, "e": 3}},
            "keep": True,
        }

    def test_lists_replace_whole(self) -> None:
        assert deep_merge({"l": [1, 2, 3]}, {"l": [9]}) == {"l": [9]}

    def test_scalars_and_null_replace(self) -> None:
        assert deep_merge({"s": "a", "o": {"x": 1}}, {"s": "b", "o": None}) == {
            "s": "b",
            "o": None,
        }

    def test_an_object_replaces_a_scalar(self) -> None:
        assert deep_merge({"o": None}, {"o": {"x": 1}}) == {"o": {"x": 1}}

    def test_a_non_object_item_replaces_the_defaults(self) -> None:
        assert deep_merge({"a": 1}, [1]) == [1]

    def test_the_inputs_are_left_as_they_were(self) -> None:
        base, override = {"a": {"b": 1}}, {"a": {"c": 2}}
        deep_merge(base, override)
        assert (base, override) == ({"a": {"b": 1}}, {"a": {"c": 2}})


class TestCampaignId:
    """campaignId is given once, at the top: anywhere else the whole call is refused."""

    def test_in_defaults_is_refused(self) -> None:
        body = {"campaignId": "c", "defaults": {"campaignId": "d"}, "items": [{}]}
        assert refusal(body) == [(("defaults", "campaignId"), "extra_forbidden")]

    def test_in_any_item_is_refused_at_each_item(self) -> None:
        items = [{"contactId": CONTACT}, {"campaignId": "x"}, {}, {"campaignId": None}]
        assert refusal({"campaignId": "c", "items": items}) == [
            (("items", 1), "campaign_id_in_item"),
            (("items", 3), "campaign_id_in_item"),
        ]

    def test_is_required_with_the_pattern_of_spec_4_1(self) -> None:
        assert refusal({"items": [{}]}) == [(("campaignId",), "missing")]
        assert refusal({"campaignId": "no spaces", "items": [{}]}) == [
            (("campaignId",), "string_pattern_mismatch")
        ]

    def test_every_item_gets_the_batchs_campaign_id(self) -> None:
        item = {"contactId": CONTACT, "template": {"templateId": TEMPLATE}}
        assert batch([item]).item_request(item).campaign_id == "spring"


class TestEnvelope:
    """The call is refused only for its own shape; items are checked one by one later."""

    def test_contact_id_in_defaults_is_refused(self) -> None:
        body = {"campaignId": "c", "defaults": {"contactId": CONTACT}, "items": [{}]}
        assert refusal(body) == [(("defaults", "contactId"), "extra_forbidden")]

    def test_unknown_top_level_members_are_refused(self) -> None:
        assert refusal({"campaignId": "c", "items": [{}], "extra": 1}) == [
            (("extra",), "extra_forbidden")
        ]

    def test_ten_thousand_items_pass_and_one_more_is_refused(self) -> None:
        assert len(batch([{}] * MAX_BATCH_ITEMS).items) == MAX_BATCH_ITEMS
        assert refusal({"campaignId": "c", "items": [{}] * (MAX_BATCH_ITEMS + 1)}) == [
            (("items",), "too_long")
        ]

    def test_an_empty_list_is_refused(self) -> None:
        assert refusal({"campaignId": "c", "items": []}) == [(("items",), "too_short")]

    def test_items_must_be_a_list(self) -> None:
        assert refusal({"campaignId": "c", "items": {"0": {}}}) == [(("items",), "list_type")]

    def test_malformed_defaults_are_refused_once(self) -> None:
        body = {"campaignId": "c", "defaults": {"forceSend": "yes"}, "items": [{}]}
        assert refusal(body) == [(("defaults", "forceSend"), "bool_type")]

    def test_items_of_any_shape_pass_the_envelope(self) -> None:
        assert batch([5, None, "x", {"unknown": 1}]).items == [5, None, "x", {"unknown": 1}]

    def test_defaults_and_items_name_the_request_members_but_contact_and_campaign(self) -> None:
        request = set(InitiateOutboundRequest.model_fields)
        assert set(RequestDefaults.model_fields) == request - {"contact_id", "campaign_id"}
        assert set(BatchItem.model_fields) == request - {"campaign_id"}


class TestAsSent:
    """The command carries the merged item as sent: what neither side sent stays out."""

    def test_defaults_members_the_item_does_not_send_are_sent_for_it(self) -> None:
        defaults = {"template": {"templateId": TEMPLATE}, "forceSend": False, "brandId": None}
        body = batch([{"contactId": CONTACT, "template": {"parameters": ["Luis"]}}], defaults)

        assert payload(body.item_request(body.items[0])) == {
            "contactId": CONTACT,
            "template": {"templateId": TEMPLATE, "parameters": ["Luis"]},
            "forceSend": False,
            "brandId": None,
            "campaignId": "spring",
        }

    def test_members_nobody_sent_stay_out(self) -> None:
        body = batch([{"contactId": CONTACT, "template": {"templateId": TEMPLATE}}])

        assert payload(body.item_request(body.items[0])) == {
            "contactId": CONTACT,
            "template": {"templateId": TEMPLATE},
            "campaignId": "spring",
        }

    def test_lists_of_the_item_replace_the_defaults(self) -> None:
        defaults = {"template": {"templateId": TEMPLATE}, "additionalMessages": [TEXT, MEDIA]}
        body = batch([{"contactId": CONTACT, "additionalMessages": [MEDIA]}], defaults)

        assert payload(body.item_request(body.items[0]))["additionalMessages"] == [MEDIA]

    def test_objects_merge_down_to_opt_in(self) -> None:
        defaults = {
            "template": {"templateId": TEMPLATE},
            "context": {"notes": ["fair"]},
            "optIn": {"source": "web", "meta": {"a": 1}},
        }
        item = {"contactId": CONTACT, "context": {"media": []}, "optIn": {"meta": {"b": 2}}}
        sent = payload(batch([item], defaults).item_request(item))

        assert (sent["context"], sent["optIn"]) == (
            {"notes": ["fair"], "media": []},
            {"source": "web", "meta": {"a": 1, "b": 2}},
        )

    def test_an_item_clears_a_default_with_null(self) -> None:
        defaults = {"template": {"templateId": TEMPLATE}, "context": {"notes": ["fair"]}}
        item = {"contactId": CONTACT, "context": None}

        assert payload(batch([item], defaults).item_request(item))["context"] is None


class TestSortItems:
    """Valid items become commands in order; invalid ones are reported by index with errors."""

    def test_commands_and_invalid_items_by_index(self) -> None:
        good = {"contactId": CONTACT, "template": {"templateId": TEMPLATE}}
        items = [
            good,
            {"template": {"templateId": TEMPLATE}},
            "not an object",
            {**good, "additionalMessages": [TEXT] * 6},
            {**good, "contactid": CONTACT},
            good,
        ]

        commands, invalid = sort_items(WORKSPACE, batch(items))

        assert [c.request.contact_id for c in commands] == [UUID(CONTACT)] * 2
        assert len({c.command_id for c in commands}) == 2
        assert {c.workspace_id for c in commands} == {WORKSPACE}
        assert [(entry["index"], [e["loc"] for e in entry["errors"]]) for entry in invalid] == [
            (1, [["body", "items", 1, "contactId"]]),
            (2, [["body", "items", 2]]),
            (3, [["body", "items", 3, "additionalMessages"]]),
            (4, [["body", "items", 4, "contactid"]]),
        ]
        assert all(isinstance(e["msg"], str) for entry in invalid for e in entry["errors"])

    def test_a_template_from_nowhere_is_an_item_error(self) -> None:
        _, invalid = sort_items(WORKSPACE, batch([{"contactId": CONTACT}]))

        assert invalid == [
            {
                "index": 0,
                "errors": [{"loc": ["body", "items", 0, "template"], "msg": "Field required"}],
            }
        ]
