"""Hostile input against SPEC 4.3's batch body, as the API reads and sorts it: a value no
request may hold (NUL, a lone surrogate, an inexact number) makes only its item invalid;
in ``defaults`` or outside the items, or nested too deep anywhere, it refuses the call;
the Idempotency-Key's body hash stays "equal as parsed JSON"."""

from __future__ import annotations

import json
import random
from typing import Any
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from api_shim.batch_intake import sort_items
from api_shim.body import MAX_NESTING, TOO_DEEP, body_hash, parse
from api_shim.problems import ApiProblem
from schemas.batches import InitiateOutboundBatchRequest as Batch
from tests.unit.hostile import (
    EXACT_NUMBERS,
    INEXACT_NUMBERS,
    RAW,
    SETTINGS,
    UNSTORABLE,
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
from worker.store.commands import request_hash

WORKSPACE = UUID(int=1)
TEMPLATE = str(UUID(int=2))
DEFAULTS = {"template": {"templateId": TEMPLATE}}
NUL = "strings must not contain NUL (\\u0000)"
SURROGATE = "strings must not contain lone surrogates"

valid_items = st.fixed_dictionaries(
    {"contactId": uuids},
    optional={
        "optIn": st.dictionaries(storable_text, json_values, max_size=3),
        "template": st.fixed_dictionaries({"parameters": st.lists(storable_text, max_size=2)}),
        "forceSend": st.booleans(),
    },
)
# An item with one bad value: (item as JSON text with RAW, the raw token, where, message).
bad_values = st.one_of(
    st.sampled_from(UNSTORABLE).map(lambda s: (json.dumps(s), NUL if "\x00" in s else SURROGATE)),
    st.sampled_from(INEXACT_NUMBERS).map(lambda n: (n, f"the number {n[:37]}")),
)
# What an item may be: valid, holding one bad value in optIn, or any JSON at all (but a
# campaignId member, which refuses the whole call).
kinds = st.sampled_from(["valid", "bad value", "anything"])
anything = hostile_json(json_scalars).filter(
    lambda v: not (isinstance(v, dict) and "campaignId" in v)
)


def batch_text(items_text: list[str], **extra: Any) -> bytes:
    """A batch body whose items are given as JSON text."""
    head = json.dumps({"campaignId": "c", "defaults": DEFAULTS, **extra})[:-1]
    return (head + ', "items": [' + ", ".join(items_text) + "]}").encode()


def sorted_batch(raw: bytes) -> tuple[list[Any], list[dict[str, Any]], str]:
    """What the batch route does with a body: (commands, invalid items, its hash)."""
    data, batch, refused = parse(raw, Batch, items_apart=True)
    accepted, invalid = sort_items(WORKSPACE, batch, refused)
    return accepted, invalid, body_hash(data)


def refusal(raw: bytes) -> list[dict[str, Any]]:
    try:
        parse(raw, Batch, items_apart=True)
    except ApiProblem as problem:
        return list(problem.as_problem()["errors"])
    raise AssertionError("accepted")


@st.composite
def mixed_items(draw: st.DrawFn) -> tuple[list[str], dict[int, tuple[str, str]]]:
    """Items as JSON text, and for each with a bad value: (where, message)."""
    texts: list[str] = []
    bad: dict[int, tuple[str, str]] = {}
    for index in range(draw(st.integers(1, 8))):
        kind = draw(kinds)
        item = draw(valid_items)
        if kind == "bad value":
            token, message = draw(bad_values)
            key = draw(storable_text)
            texts.append(with_raw({**item, "optIn": {key: RAW}}, token).decode())
            bad[index] = (key, message)
        elif kind == "anything":
            texts.append(dumps(draw(anything)).decode())
        else:
            texts.append(dumps(item).decode())
    return texts, bad


class TestOneItemsValues:
    """A bad value makes its own item invalid, at its location; the others are sorted as
    they would be alone."""

    @SETTINGS
    @given(mixed_items())
    def test_only_the_items_holding_one_are_invalid_for_it(self, mixed) -> None:
        texts, bad = mixed

        accepted, invalid, _ = sorted_batch(batch_text(texts))

        by_index = {entry["index"]: entry["errors"] for entry in invalid}
        assert [entry["index"] for entry in invalid] == sorted(by_index)
        assert len(accepted) + len(invalid) == len(texts)
        for index, (key, message) in bad.items():
            [error] = by_index[index]
            assert error["loc"] == ["body", "items", index, "optIn", key]
            assert error["msg"].startswith(message)
        for index, errors in by_index.items():
            assert all(e["loc"][:3] == ["body", "items", index] for e in errors)
        json.dumps(invalid, ensure_ascii=False).encode()  # storable: no lone surrogate
        assert all("\x00" not in s for s in strings_in(invalid))

    @SETTINGS
    @given(mixed_items())
    def test_each_valid_item_is_accepted_as_it_would_be_alone(self, mixed) -> None:
        texts, bad = mixed

        accepted, invalid, _ = sorted_batch(batch_text(texts))

        alone = [bool(sorted_batch(batch_text([text]))[0]) for text in texts]
        assert len(accepted) == sum(alone)
        assert {e["index"] for e in invalid} == {i for i, ok in enumerate(alone) if not ok}
        assert set(bad) <= {e["index"] for e in invalid}


class TestWholeCall:
    """Outside the items a bad value concerns every item: the whole call is refused."""

    @SETTINGS
    @given(bad_values, storable_text)
    def test_in_defaults(self, bad, key) -> None:
        token, message = bad
        defaults = {**DEFAULTS, "optIn": {key: RAW}}
        raw = with_raw({"campaignId": "c", "defaults": defaults, "items": [{}]}, token)

        [error] = refusal(raw)

        assert (error["loc"], error["msg"][: len(message)]) == (
            ["body", "defaults", "optIn", key],
            message,
        )

    @SETTINGS
    @given(st.sampled_from(UNSTORABLE))
    def test_in_the_campaign_id(self, bad: str) -> None:
        [error] = refusal(dumps({"campaignId": bad, "items": [{}]}))

        assert error["loc"] == ["body", "campaignId"]

    @SETTINGS
    @given(st.integers(1, 300), st.integers(0, 3))
    def test_nesting_past_the_bound_in_an_item(self, levels: int, index: int) -> None:
        """body(1) > items(2) > item(3) > optIn(4) > ``levels`` arrays."""
        items = [{"contactId": TEMPLATE}] * index + [{"optIn": {"deep": nested(levels)}}]
        raw = dumps({"campaignId": "c", "items": items})

        if levels + 4 <= MAX_NESTING:
            assert sorted_batch(raw)[1][-1]["index"] == index  # no template: invalid alone
        else:
            zeros = [0] * (MAX_NESTING - 4)  # down to the array at level 129
            assert refusal(raw) == [
                {"loc": ["body", "items", index, "optIn", "deep", *zeros], "msg": TOO_DEEP}
            ]


class TestBodyHash:
    """The Idempotency-Key compares bodies as parsed JSON, refused values included."""

    @SETTINGS
    @given(json_values)
    def test_is_request_hash_for_every_storable_body(self, data: Any) -> None:
        assert body_hash(data) == request_hash(data)

    @SETTINGS
    @given(st.dictionaries(storable_text, json_values, min_size=2, max_size=6), st.randoms())
    def test_member_order_does_not_matter(self, data: dict[str, Any], rng: random.Random):
        members = list(data.items())
        rng.shuffle(members)

        assert body_hash(dict(members)) == body_hash(data)

    @SETTINGS
    @given(mixed_items())
    def test_the_same_text_hashes_the_same(self, mixed) -> None:
        raw = batch_text(mixed[0])

        assert sorted_batch(raw)[2] == sorted_batch(raw)[2]

    @SETTINGS
    @given(st.sampled_from(INEXACT_NUMBERS), st.sampled_from(EXACT_NUMBERS), storable_text)
    def test_an_inexact_number_is_not_its_text_nor_null_nor_another_number(
        self, inexact: str, exact: str, key: str
    ) -> None:
        def hashed(token: str) -> str:
            item = {"contactId": TEMPLATE, "optIn": {key: RAW}}
            return sorted_batch(with_raw({"campaignId": "c", "items": [item]}, token))[2]

        hashes = [hashed(t) for t in (inexact, json.dumps(inexact), "null", exact)]

        assert len(set(hashes)) == 4

    @SETTINGS
    @given(st.sampled_from(INEXACT_NUMBERS), st.sampled_from(INEXACT_NUMBERS))
    def test_inexact_numbers_at_other_places_differ(self, first: str, second: str) -> None:
        def hashed(a: str, b: str) -> str:
            items = [{"optIn": {"a": RAW}}, {"optIn": {"b": RAW}}]
            raw = dumps({"campaignId": "c", "items": items}).decode()
            raw = raw.replace(json.dumps(RAW), a, 1).replace(json.dumps(RAW), b, 1)
            return sorted_batch(raw.encode())[2]

        assert (hashed(first, second) == hashed(second, first)) == (first == second)

    @SETTINGS
    @given(st.sampled_from(UNSTORABLE), storable_text)
    def test_a_lone_surrogate_or_nul_in_an_item_hashes(self, bad: str, key: str) -> None:
        raw = dumps({"campaignId": "c", "items": [{"optIn": {key: bad}}, {key + bad: 1}]})

        hashes = {sorted_batch(raw)[2], sorted_batch(raw.replace(b"\\u", b"\\u0041\\u", 1))[2]}

        assert len(hashes) == 2
