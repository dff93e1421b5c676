"""SPEC 4.3 batch bodies at and just past every limit, and values no item may carry,
against the real processes: 8 MiB, 10,000 items, 5 follow-ups of 4096 characters,
nesting depth, NUL characters, lone surrogates and inexact numbers."""

from __future__ import annotations

import json
import time
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from sqlalchemy import Engine, select

from tests.e2e.support import Api, Catalog, assert_problem, count
from tests.world import body
from worker.store.tables import batches, commands

MAX_BODY_BYTES = 8 * 1024 * 1024
# api_shim.body.MAX_NESTING: arrays and objects, the body itself counting as level 1.
MAX_NESTING = 128
CAMPAIGN = "limits"
TEXT = {"type": "text", "text": "Hola"}
JSON = {"Content-Type": "application/json"}
# Stands for a raw JSON token no encoder writes (1e400, a lone surrogate's escape ...).
RAW = "@raw@"


def post_raw(api: Api, content: bytes, url: str | None = None, **headers: str) -> httpx.Response:
    return api.client.post(
        url or api.base + "/outbound/batch", content=content, headers=api.headers(**JSON, **headers)
    )


def batch_text(items: list[Any], raw: str = "", **extra: Any) -> bytes:
    """The batch's JSON text, with the member ``RAW`` written as the raw token ``raw``."""
    text = json.dumps({"campaignId": CAMPAIGN, "items": items, **extra})
    return text.replace(json.dumps(RAW), raw).encode()


def with_template(catalog: Catalog) -> dict[str, Any]:
    return {"template": {"templateId": str(catalog.template), "parameters": ["Luis", "Ana"]}}


def item(contact: UUID | str, **extra: Any) -> dict[str, Any]:
    return {"contactId": str(contact), **extra}


def accepted(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    return dict(response.json())


def errors_at(answer: dict[str, Any]) -> list[tuple[int, list[Any]]]:
    """Each invalid item's index and (location, message) of its errors."""
    return [(e["index"], [(x["loc"], x["msg"]) for x in e["errors"]]) for e in answer["invalid"]]


def stored_requests(engine: Engine) -> list[dict[str, Any]]:
    """Every command's request as stored, in no particular order."""
    with engine.connect() as conn:
        return [row.payload["request"] for row in conn.execute(select(commands.c.payload))]


def nested(levels: int) -> str:
    """``levels`` arrays, each inside the one before, as JSON text."""
    return "[" * levels + "]" * levels


def padded_to(size: int, items_before_padding: list[Any], pad_item: int = 0) -> bytes:
    """A batch body of exactly ``size`` bytes: item ``pad_item`` gets an ``optIn.pad`` string."""
    items = [dict(i) for i in items_before_padding]
    items[pad_item]["optIn"] = {"pad": ""}
    short = len(batch_text(items))
    items[pad_item]["optIn"] = {"pad": "x" * (size - short)}
    content = batch_text(items)
    assert len(content) == size
    return content


class TestBodySize:
    """A valid body of exactly 8 MiB is a batch; one byte more is 413 and records nothing."""

    def test_a_valid_body_of_exactly_8_mib_is_accepted(self, api, catalog, engine):
        content = padded_to(MAX_BODY_BYTES, [item(catalog.contact, **with_template(catalog))])

        answer = accepted(post_raw(api, content))

        assert (answer["accepted"], answer["invalid"]) == (1, [])
        [request] = stored_requests(engine)
        assert request["optIn"] == json.loads(content)["items"][0]["optIn"]

    def test_one_byte_more_is_payload_too_large(self, api, catalog, engine):
        content = padded_to(MAX_BODY_BYTES + 1, [item(catalog.contact, **with_template(catalog))])

        problem = assert_problem(post_raw(api, content), 413, "PayloadTooLarge")

        assert problem["detail"]
        assert (count(engine, batches), count(engine, commands)) == (0, 0)


@pytest.mark.slow
class TestTenThousandItemsInEightMiB:
    """Both limits at once: 10,000 items in a body of exactly 8 MiB are 10,000 commands."""

    def test_accepted_whole(self, workerless_api_url, world, engine):
        template = {"template": {"templateId": str(uuid4())}}
        items = [item(uuid4(), **template) for _ in range(10_000)]
        content = padded_to(MAX_BODY_BYTES, items, pad_item=9_999)

        with httpx.Client(base_url=workerless_api_url, timeout=120) as client:
            started = time.perf_counter()
            response = client.post(
                f"/v1/workspaces/{world.workspace_id}/leadscout/outbound/batch",
                content=content,
                headers={"X-API-Key": world.api_key, **JSON},
            )
            print(f"10,000 items in 8 MiB accepted in {time.perf_counter() - started:.2f} s")

        assert (response.status_code, response.json()["accepted"]) == (202, 10_000), response.text
        assert response.json()["invalid"] == []
        assert count(engine, commands) == 10_000


class TestFollowUps:
    """SPEC 4.1's five follow-ups of at most 4096 characters, in an item or in defaults."""

    def test_five_in_an_item_are_accepted_and_six_make_only_that_item_invalid(
        self, api, catalog, engine
    ):
        items = [
            item(catalog.contact, additionalMessages=[TEXT] * 5),
            item(catalog.contact, additionalMessages=[TEXT] * 6),
        ]

        answer = accepted(post_raw(api, batch_text(items, defaults=with_template(catalog))))

        assert answer["accepted"] == 1
        assert [(i, [loc for loc, _ in e]) for i, e in errors_at(answer)] == [
            (1, [["body", "items", 1, "additionalMessages"]])
        ]
        assert [len(r["additionalMessages"]) for r in stored_requests(engine)] == [5]

    def test_five_in_defaults_are_sent_for_every_item(self, api, world, catalog, engine):
        defaults = {**with_template(catalog), "additionalMessages": [TEXT] * 5}
        items = [item(catalog.contact), item(world.contact(phone="+5215500000009"))]

        answer = accepted(post_raw(api, batch_text(items, defaults=defaults)))

        assert (answer["accepted"], answer["invalid"]) == (2, [])
        assert [r["additionalMessages"] for r in stored_requests(engine)] == [[TEXT] * 5] * 2

    def test_six_in_defaults_refuse_the_whole_call(self, api, catalog, engine):
        defaults = {**with_template(catalog), "additionalMessages": [TEXT] * 6}

        problem = assert_problem(
            post_raw(api, batch_text([item(catalog.contact)], defaults=defaults)),
            422,
            "ValidationError",
        )

        assert [e["loc"] for e in problem["errors"]] == [["body", "defaults", "additionalMessages"]]
        assert (count(engine, batches), count(engine, commands)) == (0, 0)

    def test_4096_characters_are_accepted_and_4097_make_only_that_item_invalid(
        self, api, catalog, engine
    ):
        """Characters, not bytes nor UTF-16 units: 4096 emoji are 4096 characters. (The
        location names the message's type after its index, as pydantic does for a union.)"""
        texts = ["x" * 4096, "😀" * 4096, "x" * 4097, "😀" * 4097]
        items = [
            item(catalog.contact, additionalMessages=[{"type": "text", "text": t}]) for t in texts
        ]

        answer = accepted(post_raw(api, batch_text(items, defaults=with_template(catalog))))

        assert answer["accepted"] == 2
        assert [(i, [loc for loc, _ in e]) for i, e in errors_at(answer)] == [
            (2, [["body", "items", 2, "additionalMessages", 0, "text", "text"]]),
            (3, [["body", "items", 3, "additionalMessages", 0, "text", "text"]]),
        ]
        stored = sorted(len(r["additionalMessages"][0]["text"]) for r in stored_requests(engine))
        assert stored == [4096, 4096]


class TestNesting:
    """Arrays and objects nest at most 128 levels (the body is level 1): deeper, the whole
    call is a clean 422 and the API goes on serving."""

    @pytest.mark.parametrize("where", ["item", "defaults"])
    def test_ten_thousand_levels_in_opt_in_are_refused(self, api, catalog, engine, where):
        opt_in = {"optIn": {"deep": RAW}}
        items = [item(catalog.contact, **(opt_in if where == "item" else {}))]
        defaults = {**with_template(catalog), **(opt_in if where == "defaults" else {})}

        response = post_raw(api, batch_text(items, raw=nested(10_000), defaults=defaults))

        problem = assert_problem(response, 422, "ValidationError")
        assert [e["loc"] for e in problem["errors"]] == [["body"]]
        assert (count(engine, batches), count(engine, commands)) == (0, 0)
        assert accepted(post_raw(api, batch_text([item(catalog.contact)])))["accepted"] == 0

    @pytest.mark.parametrize("levels", [MAX_NESTING - 4 + 1, 500])
    def test_past_the_bound_the_whole_call_is_refused_at_the_first_level_too_deep(
        self, api, catalog, engine, levels
    ):
        """body(1) > items(2) > item(3) > optIn(4) > levels arrays: level 129 is refused."""
        items = [item(catalog.contact, optIn={"deep": RAW}), item(catalog.contact)]
        defaults = with_template(catalog)

        response = post_raw(api, batch_text(items, raw=nested(levels), defaults=defaults))

        problem = assert_problem(response, 422, "ValidationError")
        [error] = problem["errors"]
        too_deep = MAX_NESTING + 1 - 5  # the zeros after `deep` leading to level 129
        assert error["loc"] == ["body", "items", 0, "optIn", "deep", *[0] * too_deep]
        assert error["msg"] == f"nested deeper than {MAX_NESTING} levels of arrays and objects"
        assert (count(engine, batches), count(engine, commands)) == (0, 0)

    def test_at_the_bound_the_value_is_stored_and_read_back_verbatim(self, api, catalog):
        """A single initiation: body(1) > optIn(2) > 126 arrays reach level 128 exactly."""
        request = json.dumps(body(catalog.contact, catalog.template, optIn={"deep": RAW}))
        content = request.replace(json.dumps(RAW), nested(MAX_NESTING - 2)).encode()

        response = post_raw(api, content, url=api.base + "/outbound")

        assert response.status_code == 200, response.text
        conversation = api.conversation(response.json()["conversation"]["id"])
        assert conversation.status_code == 200, conversation.text
        assert conversation.json()["optIn"] == json.loads(content)["optIn"]


class TestValuesInOneItem:
    """A NUL, a lone surrogate or an inexact number inside one item makes only that item
    invalid; in defaults or outside the items it refuses the whole call."""

    @pytest.mark.parametrize(
        ("raw", "loc", "msg"),
        [
            ('"a\\u0000b"', ["optIn", "x"], "strings must not contain NUL (\\u0000)"),
            ('{"k\\u0000": 1}', ["optIn", "x"], "strings must not contain NUL (\\u0000)"),
            ('"\\ud800"', ["optIn", "x"], "strings must not contain lone surrogates"),
            ("1e400", ["optIn", "x"], "the number 1e400 cannot be kept exactly"),
            ("-1e-400", ["optIn", "x"], "the number -1e-400 cannot be kept exactly"),
        ],
        ids=["NUL", "NUL in a key", "lone surrogate", "1e400", "-1e-400"],
    )
    def test_only_that_item_is_invalid(self, api, world, catalog, engine, raw, loc, msg):
        others = [world.contact(phone=f"+52155000001{n}") for n in range(2)]
        items = [item(others[0]), item(catalog.contact, optIn={"x": RAW}), item(others[1])]

        answer = accepted(
            post_raw(api, batch_text(items, raw=raw, defaults=with_template(catalog)))
        )

        [(index, [(location, message)])] = errors_at(answer)
        assert (answer["accepted"], index, location) == (2, 1, ["body", "items", 1, *loc])
        assert message.startswith(msg)
        assert sorted(r["contactId"] for r in stored_requests(engine)) == sorted(map(str, others))

    def test_a_bad_value_makes_an_item_invalid_whatever_else_it_holds(self, api, catalog):
        """An item with a bad value and an unknown member is listed once, for the value."""
        items = [item(catalog.contact, optIn={"x": RAW}, colour="red")]

        answer = accepted(post_raw(api, batch_text(items, raw="1e400")))

        assert [(i, [loc for loc, _ in e]) for i, e in errors_at(answer)] == [
            (0, [["body", "items", 0, "optIn", "x"]])
        ]

    @pytest.mark.parametrize(
        ("where", "raw", "loc"),
        [
            ("defaults", "1e400", ["body", "defaults", "optIn", "x"]),
            ("defaults", '"\\u0000"', ["body", "defaults", "optIn", "x"]),
            ("campaignId", '"a\\u0000"', ["body", "campaignId"]),
            ("items", '{"0": {"x": 1e400}}', ["body", "items", "0", "x"]),
        ],
        ids=["inexact in defaults", "NUL in defaults", "NUL in campaignId", "items an object"],
    )
    def test_outside_the_items_the_whole_call_is_refused(
        self, api, catalog, engine, where, raw, loc
    ):
        payload: dict[str, Any] = {
            "campaignId": CAMPAIGN,
            "defaults": {**with_template(catalog)},
            "items": [item(catalog.contact)],
        }
        if where == "defaults":
            payload["defaults"]["optIn"] = {"x": RAW}
        else:
            payload[where] = RAW
        content = json.dumps(payload).replace(json.dumps(RAW), raw).encode()

        problem = assert_problem(post_raw(api, content), 422, "ValidationError")

        assert [e["loc"] for e in problem["errors"]] == [loc]
        assert (count(engine, batches), count(engine, commands)) == (0, 0)

    def test_a_replay_answers_the_same_and_another_spelling_is_another_body(
        self, api, catalog, engine
    ):
        """1e400 and the string "1e400" are different bodies under one Idempotency-Key."""
        items = [item(catalog.contact, optIn={"x": RAW}), item(catalog.contact)]
        defaults = with_template(catalog)
        key = {"Idempotency-Key": "hostile-1"}
        first = accepted(post_raw(api, batch_text(items, raw="1e400", defaults=defaults), **key))

        replay = accepted(post_raw(api, batch_text(items, raw="1e400", defaults=defaults), **key))
        as_string = post_raw(api, batch_text(items, raw='"1e400"', defaults=defaults), **key)

        assert replay == first
        assert (first["accepted"], [e["index"] for e in first["invalid"]]) == (1, [0])
        problem = assert_problem(as_string, 422, "IdempotencyKeyReused")
        assert problem["batchId"] == first["batchId"]
        assert (count(engine, batches), count(engine, commands)) == (1, 1)


class TestEmptyIdempotencyKey:
    """An empty Idempotency-Key is not a key: 422 ValidationError on both initiation routes."""

    @pytest.mark.parametrize("route", ["/outbound", "/outbound/batch"])
    def test_refused(self, api, catalog, engine, route):
        payload = (
            body(catalog.contact, catalog.template)
            if route == "/outbound"
            else {"campaignId": CAMPAIGN, "items": [item(catalog.contact)]}
        )

        response = api.client.post(
            api.base + route, json=payload, headers=api.headers(**{"Idempotency-Key": ""})
        )

        problem = assert_problem(response, 422, "ValidationError")
        assert [e["loc"] for e in problem["errors"]] == [["header", "Idempotency-Key"]]
        assert (count(engine, batches), count(engine, commands)) == (0, 0)
