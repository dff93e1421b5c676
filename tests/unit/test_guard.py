"""The /v1 guard holds a streamed body to 8 MiB before the app sees the request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from starlette.types import Message, Receive, Scope, Send

from api_shim.guard import MAX_BODY_BYTES, GuardMiddleware, KeyCache

WORKSPACE = UUID(int=0x3)
MIB = 1024 * 1024
DISCONNECT = {"type": "http.disconnect"}


class RecordingApp:
    """An app that calls ``receive`` ``reads`` times, keeps what it got, and answers 200."""

    def __init__(self, reads: int = 1) -> None:
        self.reads = reads
        self.called = False
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        for _ in range(self.reads):
            self.received.append(await receive())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Client:
    """Feeds a request's body messages to the middleware and counts how many it took."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        chunks = list(pieces)
        self.messages = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        self.taken = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.taken += 1
        return self.messages[self.taken - 1] if self.taken <= len(self.messages) else DISCONNECT

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def problem(self) -> dict[str, Any]:
        return dict(json.loads(self.sent[1]["body"]))


def request(app: RecordingApp, client: Client, headers: list[tuple[bytes, bytes]]) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/v1/workspaces/{WORKSPACE}/leadscout/conversations/x/close",
        "headers": [(b"x-api-key", b"key"), *headers],
    }
    guard = GuardMiddleware(app, KeyCache(lambda key: WORKSPACE if key == "key" else None))
    asyncio.run(guard(scope, client.receive, client.send))


CHUNKED = [(b"transfer-encoding", b"chunked")]


class TestChunkedBody:
    """A chunked body is read whole by the guard: refused past 8 MiB, else replayed intact."""

    def test_over_8_mib_is_refused_before_the_app_runs(self) -> None:
        app, client = RecordingApp(), Client([b" " * MIB] * 9)

        request(app, client, CHUNKED)

        assert (client.status, client.problem["code"], app.called) == (
            413,
            "PayloadTooLarge",
            False,
        )

    def test_reading_stops_at_the_first_chunk_past_the_limit(self) -> None:
        app, client = RecordingApp(), Client([b" " * MIB] * 20)

        request(app, client, CHUNKED)

        assert client.taken == 9

    def test_exactly_8_mib_is_replayed_as_one_message(self) -> None:
        app, client = RecordingApp(), Client([b"a" * MIB] * 7 + [b"b" * (MIB - 1), b"c"])

        request(app, client, CHUNKED)

        assert client.status == 200
        assert [len(m["body"]) for m in app.received] == [MAX_BODY_BYTES]
        assert app.received[0]["body"].endswith(b"b" * (MIB - 1) + b"c")
        assert app.received[0]["more_body"] is False

    def test_after_the_body_the_app_receives_what_the_server_sends_next(self) -> None:
        app, client = RecordingApp(reads=2), Client([b"{", b"}"])

        request(app, client, CHUNKED)

        assert app.received == [
            {"type": "http.request", "body": b"{}", "more_body": False},
            DISCONNECT,
        ]


class TestDeclaredBody:
    """A body with Content-Length is left to the server's framing: the guard reads none of it."""

    def test_declared_body_is_passed_through_unread(self) -> None:
        app, client = RecordingApp(reads=2), Client([b'{"a": ', b"1}"])

        request(app, client, [(b"content-length", b"8")])

        assert client.status == 200
        assert [m["body"] for m in app.received] == [b'{"a": ', b"1}"]

    def test_declared_length_over_8_mib_is_refused_unread(self) -> None:
        app, client = RecordingApp(), Client([b" "])

        request(app, client, [(b"content-length", str(MAX_BODY_BYTES + 1).encode())])

        assert (client.status, client.taken, app.called) == (413, 0, False)
