"""SPEC 4 / 4.4: a streamed (chunked) body is held to 8 MiB before anything else looks at it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from uuid import uuid4

import httpx

from tests.e2e.support import Api, assert_problem, count
from tests.world import body
from worker.store.tables import commands, outbox

MIB = 1024 * 1024


def chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    """``total`` bytes of JSON whitespace in pieces: httpx sends a generator chunked."""
    while total > 0:
        yield b" " * min(size, total)
        total -= size


def post_chunked(api: Api, path: str, pieces: Iterator[bytes]) -> httpx.Response:
    return api.client.post(
        api.base + path,
        content=pieces,
        headers=api.headers(**{"Content-Type": "application/json"}),
    )


class TestChunkedBodyOver8MiB:
    """9 MiB sent chunked answers 413 PayloadTooLarge on every endpoint that takes a body."""

    def test_initiate(self, api, engine):
        """The initiation is refused and no command is recorded."""
        response = post_chunked(api, "/outbound", chunks(9 * MIB))

        assert_problem(response, 413, "PayloadTooLarge")
        assert count(engine, commands) == 0

    def test_handoff_of_an_unknown_conversation(self, api):
        """Size comes before existence: 413, not 404."""
        response = post_chunked(api, f"/conversations/{uuid4()}/handoff", chunks(9 * MIB))

        assert_problem(response, 413, "PayloadTooLarge")

    def test_handoff_of_a_closed_conversation(self, api, catalog):
        """Size comes before state: 413, not 409."""
        conversation_id = api.created(body(catalog.contact, catalog.template))["conversation"]["id"]
        api.close(conversation_id)

        response = post_chunked(api, f"/conversations/{conversation_id}/handoff", chunks(9 * MIB))

        assert_problem(response, 413, "PayloadTooLarge")

    def test_close_leaves_the_conversation_active(self, api, catalog, engine):
        """Close never reads its body, yet 9 MiB of it answers 413 and closes nothing."""
        conversation_id = api.created(body(catalog.contact, catalog.template))["conversation"]["id"]

        response = post_chunked(api, f"/conversations/{conversation_id}/close", chunks(9 * MIB))

        assert_problem(response, 413, "PayloadTooLarge")
        assert api.conversation(conversation_id).json()["status"] == "active"
        assert count(engine, outbox) == 1


class TestChunkedBodyWithinLimit:
    """A chunked body up to 8 MiB reaches the endpoint whole, as if it had a Content-Length."""

    def test_handoff_in_small_chunks(self, api, world, catalog):
        """A handoff body split into 3-byte chunks is read whole: 200, handed to the user."""
        conversation_id = api.created(body(catalog.contact, catalog.template))["conversation"]["id"]
        user = world.user()
        text = json.dumps({"userId": str(user)}).encode()

        response = post_chunked(
            api, f"/conversations/{conversation_id}/handoff", chunks_of(text, 3)
        )

        assert response.status_code == 200, response.text
        assert (response.json()["control"], response.json()["assignedUserId"]) == (
            "human",
            str(user),
        )

    def test_exactly_8_mib_is_read(self, api):
        """8 MiB of padding around {} is not too large: its shape is checked (422)."""
        pieces = iter([*chunks(8 * MIB - 2), b"{}"])

        assert_problem(post_chunked(api, "/outbound", pieces), 422, "ValidationError")


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))
