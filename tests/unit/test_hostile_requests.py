"""Hostile input against the request bodies of SPEC 4.1 and 4.4, as the API reads them
(``api_shim.body.parse``): any bytes give a model or a 422 ValidationError, never anything
else; what is accepted is storable and round-trips; every limit is exact."""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from api_shim.body import MAX_NESTING, TOO_DEEP, parse
from api_shim.problems import ApiProblem
from api_shim.routes.conversations import HandoffRequest
from schemas.api import CAMPAIGN_ID_PATTERN, MAX_ADDITIONAL_MESSAGES, MAX_TEXT_LENGTH
from schemas.api import InitiateOutboundRequest as Request
from schemas.batches import InitiateOutboundBatchRequest
from schemas.commands import InitiateOutbound
from tests.unit.hostile import (
    EXACT_NUMBERS,
    INEXACT_NUMBERS,
    RAW,
    SETTINGS,
    UNSTORABLE,
    any_text,
    dumps,
    hostile_json,
    json_scalars,
    json_values,
    nested,
    storable_text,
    strings_in,
    uuids,
    with_raw,
)

WORKSPACE = UUID(int=1)
COMMAND = UUID(int=2)


def outcome(raw: bytes, model: type[Any] = Request) -> Any:
    """The parsed model, or the problem the API would answer."""
    try:
        return parse(raw, model)[1]
    except ApiProblem as problem:
        return problem


def refusal(raw: bytes, model: type[Any] = Request) -> list[dict[str, Any]]:
    """The errors of the 422 ValidationError problem the body must get."""
    answer = outcome(raw, model)
    assert isinstance(answer, ApiProblem), f"accepted: {answer!r}"
    return list(answer.as_problem()["errors"])


def locs(answer: Any) -> list[list[Any]]:
    assert isinstance(answer, ApiProblem), f"accepted: {answer!r}"
    return [error["loc"] for error in answer.as_problem()["errors"]]


def assert_validation_problem(problem: ApiProblem) -> None:
    """422 ValidationError whose errors name body locations, and which is itself storable
    JSON: no NUL, no lone surrogate (it is stored as a command's outcome, or a batch's)."""
    body = problem.as_problem()
    assert (body["status"], body["code"]) == (422, "ValidationError")
    assert body["errors"]
    for error in body["errors"]:
        assert set(error) == {"loc", "msg"} and error["loc"][0] == "body", error
        assert isinstance(error["msg"], str) and error["msg"], error
    assert all("\x00" not in s for s in strings_in(body))
    json.dumps(body, ensure_ascii=False).encode()


def assert_storable_round_trip(data: Any, request: Request) -> None:
    """The command keeps the request exactly as sent, in text PostgreSQL can store."""
    command = InitiateOutbound(command_id=COMMAND, workspace_id=WORKSPACE, request=request)
    message = command.to_message()
    assert message["request"] == data
    text = json.dumps(message, ensure_ascii=False)
    assert "\x00" not in text
    text.encode()  # strict UTF-8: no lone surrogate
    assert InitiateOutbound.model_validate(json.loads(text)) == command


hostile = hostile_json(json_scalars)
texts = st.one_of(storable_text, any_text)
message_like = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries(
        {
            "type": st.just("media"),
            "mediaUrl": st.sampled_from(["https://a.test/x.jpg", "ftp://x", "https://"]),
            "mimeType": st.sampled_from(["image/jpeg", "image", "a/b/c"]),
        },
        optional={"caption": texts | st.none()},
    ),
    hostile,
)
request_like = st.fixed_dictionaries(
    {"contactId": uuids | hostile},
    optional={
        "template": st.fixed_dictionaries(
            {"templateId": uuids | hostile},
            optional={"parameters": st.lists(texts | hostile, max_size=3) | hostile},
        )
        | hostile,
        "additionalMessages": st.lists(message_like, max_size=7) | st.none(),
        "context": st.fixed_dictionaries({}, optional={"notes": st.lists(texts, max_size=3)})
        | hostile,
        "optIn": st.dictionaries(any_text, hostile, max_size=3) | hostile,
        "handoffOverride": st.fixed_dictionaries({"userId": uuids | hostile}) | hostile,
        "brandId": uuids | st.none() | hostile,
        "campaignId": st.from_regex(CAMPAIGN_ID_PATTERN, fullmatch=True) | texts | st.none(),
        "providerChannelId": uuids | st.none(),
        "forceSend": st.booleans() | hostile,
        "colour": hostile,
    },
)

valid_messages = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("text"), "text": storable_text.filter(lambda t: 0 < len(t) <= 4096)}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("media"),
            "mediaUrl": st.just("https://cdn.acme.test/suv.jpg"),
            "mimeType": st.just("image/jpeg"),
        },
        optional={"caption": storable_text | st.none()},
    ),
)
valid_requests = st.fixed_dictionaries(
    {
        "contactId": uuids,
        "template": st.fixed_dictionaries(
            {"templateId": uuids},
            optional={"parameters": st.lists(storable_text, max_size=4)},
        ),
    },
    optional={
        "additionalMessages": st.lists(valid_messages, max_size=5) | st.none(),
        "context": st.fixed_dictionaries(
            {},
            optional={
                "notes": st.lists(storable_text, max_size=3),
                "media": st.lists(
                    st.fixed_dictionaries(
                        {"url": st.just("https://a.test/q.pdf"), "mimeType": st.just("a/b")}
                    ),
                    max_size=2,
                ),
            },
        )
        | st.none(),
        "optIn": st.dictionaries(storable_text, json_values, max_size=4) | st.none(),
        "handoffOverride": st.fixed_dictionaries({"userId": uuids}) | st.none(),
        "brandId": uuids | st.none(),
        "campaignId": st.from_regex(CAMPAIGN_ID_PATTERN, fullmatch=True) | st.none(),
        "providerChannelId": uuids | st.none(),
        "forceSend": st.booleans(),
    },
)


def string_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where the string values (not the member names) of a JSON value are."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_paths(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_paths(v, (*path, i))]
    return [path] if isinstance(value, str) else []


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(v, rest, new) if i == head else v for i, v in enumerate(value)]


class TestAnyInput:
    """Whatever arrives, the answer is the model or a storable 422 ValidationError."""

    @SETTINGS
    @given(st.binary(max_size=300))
    def test_any_bytes(self, raw: bytes) -> None:
        for model in (Request, InitiateOutboundBatchRequest, HandoffRequest):
            answer = outcome(raw, model)
            if isinstance(answer, ApiProblem):
                assert_validation_problem(answer)

    @SETTINGS
    @given(hostile)
    def test_any_json_value(self, data: Any) -> None:
        for model in (Request, InitiateOutboundBatchRequest, HandoffRequest):
            answer = outcome(dumps(data), model)
            if isinstance(answer, ApiProblem):
                assert_validation_problem(answer)

    @SETTINGS
    @given(request_like)
    def test_anything_shaped_like_a_request(self, data: dict[str, Any]) -> None:
        """Accepted means storable and kept as sent; refused means a clean 422."""
        answer = outcome(dumps(data))
        if isinstance(answer, ApiProblem):
            assert_validation_problem(answer)
        else:
            assert_storable_round_trip(data, answer)

    @SETTINGS
    @given(st.text(max_size=40), st.sampled_from(EXACT_NUMBERS + INEXACT_NUMBERS))
    def test_any_text_with_a_raw_number(self, prefix: str, number: str) -> None:
        """Numbers as written, even past a double's reach: a model or a clean 422."""
        raw = prefix.encode("utf-8", "surrogatepass") + number.encode()
        answer = outcome(raw)
        if isinstance(answer, ApiProblem):
            assert_validation_problem(answer)


class TestAccepted:
    """A well-formed request of storable text is accepted and kept exactly as sent."""

    @SETTINGS
    @given(valid_requests)
    def test_round_trips(self, data: dict[str, Any]) -> None:
        answer = outcome(dumps(data))

        assert isinstance(answer, Request), answer.as_problem()
        assert_storable_round_trip(data, answer)

    @SETTINGS
    @given(valid_requests, st.sampled_from(EXACT_NUMBERS))
    def test_exact_numbers_in_opt_in_keep_their_value(self, data: dict[str, Any], number: str):
        raw = with_raw({**data, "optIn": {"n": RAW}}, number)

        answer = outcome(raw)

        assert isinstance(answer, Request), answer.as_problem()
        assert answer.opt_in == {"n": json.loads(number)}


class TestRefusedAtTheValue:
    """One unstorable value anywhere refuses the body with one error at that value."""

    @SETTINGS
    @given(valid_requests, st.sampled_from(UNSTORABLE), st.data())
    def test_nul_or_lone_surrogate_in_any_string(
        self, data: dict[str, Any], bad: str, draw: st.DataObject
    ) -> None:
        path = draw.draw(st.sampled_from(string_paths(data)))
        value = draw.draw(storable_text)
        at = draw.draw(st.integers(0, len(value)))
        hostile_body = replaced(data, path, value[:at] + bad + value[at:])

        [error] = refusal(dumps(hostile_body))

        assert error["loc"] == ["body", *path]
        assert error["msg"] in {
            "strings must not contain NUL (\\u0000)",
            "strings must not contain lone surrogates",
        }

    @SETTINGS
    @given(valid_requests, st.sampled_from(UNSTORABLE), storable_text)
    def test_in_a_member_name_at_its_object(self, data: dict[str, Any], bad: str, name: str):
        hostile_body = {**data, "optIn": {"fine": 1, name + bad: "x"}}

        [error] = refusal(dumps(hostile_body))

        assert error["loc"] == ["body", "optIn"]

    @SETTINGS
    @given(valid_requests, st.sampled_from(INEXACT_NUMBERS), st.lists(storable_text, max_size=3))
    def test_an_inexact_number(self, data: dict[str, Any], number: str, keys: list[str]):
        deep: Any = RAW
        for key in reversed(keys):
            deep = {key: deep}

        [error] = refusal(with_raw({**data, "optIn": {"n": [deep]}}, number))

        assert error["loc"] == ["body", "optIn", "n", 0, *keys]
        assert error["msg"].startswith("the number ")


class TestLimits:
    """SPEC 4.1's limits hold to the character, counted as code points."""

    @SETTINGS
    @given(valid_requests, st.integers(0, MAX_TEXT_LENGTH + 3), st.sampled_from(["x", "😀", "ש"]))
    def test_follow_up_text_of_1_to_4096_characters(self, data: dict[str, Any], n: int, c: str):
        """(Pydantic names the union member, "text", after the index.)"""
        body = {**data, "additionalMessages": [{"type": "text", "text": c * n}]}

        answer = outcome(dumps(body))

        if 1 <= n <= MAX_TEXT_LENGTH:
            assert isinstance(answer, Request), answer.as_problem()
        else:
            assert locs(answer) == [["body", "additionalMessages", 0, "text", "text"]]

    @SETTINGS
    @given(valid_requests, st.integers(0, MAX_TEXT_LENGTH + 3))
    def test_caption_and_note_of_at_most_4096(self, data: dict[str, Any], n: int) -> None:
        media = {"type": "media", "mediaUrl": "https://a.test/x", "mimeType": "a/b"}
        body = {
            **data,
            "additionalMessages": [{**media, "caption": "é" * n}],
            "context": {"notes": ["ا" * n]},
        }

        answer = outcome(dumps(body))

        if n <= MAX_TEXT_LENGTH:
            assert isinstance(answer, Request), answer.as_problem()
        else:
            assert locs(answer) == [
                ["body", "additionalMessages", 0, "media", "caption"],
                ["body", "context", "notes", 0],
            ]

    @SETTINGS
    @given(valid_requests, st.integers(0, MAX_ADDITIONAL_MESSAGES + 3))
    def test_at_most_five_follow_ups(self, data: dict[str, Any], n: int) -> None:
        body = {**data, "additionalMessages": [{"type": "text", "text": "Hola"}] * n}

        answer = outcome(dumps(body))

        if n <= MAX_ADDITIONAL_MESSAGES:
            assert isinstance(answer, Request) and len(answer.follow_ups) == n
        else:
            assert locs(answer) == [["body", "additionalMessages"]]

    @SETTINGS
    @given(valid_requests, st.integers(95, 105))
    def test_at_most_100_parameters(self, data: dict[str, Any], n: int) -> None:
        body = {**data, "template": {**data["template"], "parameters": ["p"] * n}}

        answer = outcome(dumps(body))

        assert isinstance(answer, Request) == (n <= 100)

    @SETTINGS
    @given(
        valid_requests,
        st.from_regex(CAMPAIGN_ID_PATTERN, fullmatch=True)
        | st.text(max_size=130)
        | st.sampled_from(["a\n", "\na", "٣", "a b", "c" * 128, "c" * 129, "é"]),
    )
    def test_campaign_id_is_accepted_exactly_when_it_matches_the_pattern(
        self, data: dict[str, Any], campaign: str
    ) -> None:
        """The model's regex engine and Python's, which the stats route uses, agree."""
        answer = outcome(dumps({**data, "campaignId": campaign}))

        matches = re.fullmatch(CAMPAIGN_ID_PATTERN, campaign) is not None
        assert isinstance(answer, Request) == matches

    @SETTINGS
    @given(valid_requests, st.integers(1, 400))
    def test_opt_in_nests_up_to_the_bound(self, data: dict[str, Any], levels: int) -> None:
        """body(1) > optIn(2) > ``levels`` arrays: deeper than level 128 is refused there."""
        body = {**data, "optIn": {"deep": nested(levels)}}

        answer = outcome(dumps(body))

        if levels + 2 <= MAX_NESTING:
            assert isinstance(answer, Request), answer.as_problem()
            assert_storable_round_trip(body, answer)
        else:
            too_deep = MAX_NESTING - 2  # arrays inside the first one, down to level 129
            assert refusal(dumps(body)) == [
                {"loc": ["body", "optIn", "deep", *[0] * too_deep], "msg": TOO_DEEP}
            ]


class TestHandoffBody:
    """SPEC 4.4's handoff body is exactly {"userId": UUID}."""

    @SETTINGS
    @given(hostile | st.fixed_dictionaries({"userId": uuids | hostile}))
    def test_accepted_only_as_one_user_id(self, data: Any) -> None:
        answer = outcome(dumps(data), HandoffRequest)

        if isinstance(answer, HandoffRequest):
            assert set(data) == {"userId"} and UUID(data["userId"]) == answer.user_id
        else:
            assert_validation_problem(answer)

    @SETTINGS
    @given(st.uuids())
    def test_any_uuid_is_accepted(self, user_id: UUID) -> None:
        answer = outcome(dumps({"userId": str(user_id)}), HandoffRequest)

        assert answer.user_id == user_id
