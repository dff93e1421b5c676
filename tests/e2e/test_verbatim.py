"""SPEC 4.4: follow-ups, context and optIn read back exactly as the client sent them."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.support import Api, Catalog, assert_problem, count
from tests.world import body
from worker.store.tables import commands

CAPTIONLESS_MEDIA = {
    "type": "media",
    "mediaUrl": "https://cdn.acme.test/suv.jpg",
    "mimeType": "image/jpeg",
}
NULL_CAPTION_MEDIA = {**CAPTIONLESS_MEDIA, "caption": None}
TEXT = {"type": "text", "text": "¿Seguimos?"}
NOTES_ONLY = {"notes": ["only notes"]}
MEDIA_ONLY = {"media": [{"url": "https://cdn.acme.test/quote.pdf", "mimeType": "application/pdf"}]}

# Python's own ceiling on integer text (sys.int_info.default_max_str_digits).
MAX_INTEGER_DIGITS = 4300
EXACT_NUMBERS = {
    "tenth": "0.1",
    "huge": "1e300",
    "tiniest": "5e-324",
    "thirtyDigits": "123456789012345678901234567890",
    "negative": "-2.5E-3",
    "longest": "9" * MAX_INTEGER_DIGITS,
}


def initiate_raw(api: Api, catalog: Catalog, opt_in_text: str) -> Any:
    """Initiates with ``optIn`` given as raw JSON text, so no client library rounds it."""
    request = json.dumps(body(catalog.contact, catalog.template))
    content = request[:-1] + ', "optIn": ' + opt_in_text + "}"
    return api.client.post(
        api.base + "/outbound",
        content=content.encode(),
        headers=api.headers(**{"Content-Type": "application/json"}),
    )


def exact_json(text: str) -> Any:
    """JSON with every number as a Decimal, so 1e300 and 10**300 compare equal, 0.1 exactly."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


class TestFollowUpsAndContextAsSent:
    """Unset optional members stay unset: no caption null, no empty list, on both paths."""

    def test_fresh_conversation_keeps_them_as_sent(self, api, catalog):
        """A captionless media follow-up and a notes-only context come back unchanged."""
        messages = [CAPTIONLESS_MEDIA, NULL_CAPTION_MEDIA, TEXT]
        request = body(
            catalog.contact, catalog.template, additionalMessages=messages, context=NOTES_ONLY
        )
        created = api.created(request)["conversation"]

        detail = api.conversation(created["id"]).json()

        assert [f["content"] for f in detail["followUps"]] == messages
        assert detail["context"] == NOTES_ONLY

    def test_reused_conversation_keeps_them_as_sent(self, api, catalog):
        """A reuse appends its follow-ups and replaces the context exactly as sent."""
        first = body(catalog.contact, catalog.template, context=NOTES_ONLY)
        conversation_id = api.created(first)["conversation"]["id"]
        again = body(
            catalog.contact,
            catalog.template,
            forceSend=True,
            additionalMessages=[CAPTIONLESS_MEDIA],
            context=MEDIA_ONLY,
        )
        assert api.created(again)["alreadyInitiated"] is True

        detail = api.conversation(conversation_id).json()

        assert [f["content"] for f in detail["followUps"]] == [CAPTIONLESS_MEDIA]
        assert detail["context"] == MEDIA_ONLY


class TestOptInNumbers:
    """optIn numbers are kept exactly or refused with 422 — never changed silently."""

    def test_exact_numbers_read_back_with_the_same_value(self, api, catalog):
        """0.1, 1e300, the smallest double, 30 and 4,300 digit integers keep their values."""
        opt_in = "{" + ", ".join(f'"{k}": {v}' for k, v in EXACT_NUMBERS.items()) + "}"
        response = initiate_raw(api, catalog, opt_in)
        assert response.status_code == 200, response.text

        detail = api.conversation(response.json()["conversation"]["id"])

        expected = {name: Decimal(text) for name, text in EXACT_NUMBERS.items()}
        assert exact_json(detail.text)["optIn"] == expected

    @pytest.mark.parametrize(
        "literal",
        [
            "1e400",
            "-1e400",
            "1e-400",
            "0.10000000000000000001",
            "12345678901234567890.5",
            "9" * (MAX_INTEGER_DIGITS + 1),
        ],
    )
    def test_numbers_that_cannot_be_kept_are_refused(self, api, catalog, engine, literal):
        """A number a double cannot hold as written answers 422 at its member, accepts nothing."""
        response = initiate_raw(api, catalog, '{"consent": [true, {"score": ' + literal + "}]}")

        problem = assert_problem(response, 422, "ValidationError")
        assert [e["loc"] for e in problem["errors"]] == [["body", "optIn", "consent", 1, "score"]]
        assert count(engine, commands) == 0
