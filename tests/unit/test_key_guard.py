"""The API key cache: revocation by hash, and a database outage answered 503, not 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

from sqlalchemy.exc import OperationalError
from starlette.types import Message

from api_shim.guard import GuardMiddleware, KeyCache
from worker.store.workspaces import hash_key

WORKSPACE = UUID(int=0x7)
PATH = f"/v1/workspaces/{WORKSPACE}/leadscout/commands/x"


class Database:
    """A key lookup that counts its calls and can be made unreachable."""

    def __init__(self, keys: dict[str, UUID]) -> None:
        self.keys = keys
        self.down = False
        self.calls = 0

    def lookup(self, api_key: str) -> UUID | None:
        self.calls += 1
        if self.down:
            raise OperationalError("SELECT ...", {}, ConnectionRefusedError("refused"))
        return self.keys.get(api_key)


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def get(cache: KeyCache, api_key: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, headers, body) of a GET through the guard."""
    sent: list[Message] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": PATH,
        "headers": [(b"x-api-key", api_key.encode())],
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(GuardMiddleware(ok_app, cache)(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


class TestRevocation:
    """A revoked key's hash evicts it at once; the other keys stay cached."""

    def test_a_revoked_key_is_looked_up_again(self):
        database = Database({"old": WORKSPACE, "other": WORKSPACE})
        cache = KeyCache(database.lookup)
        assert [get(cache, "old")[0], get(cache, "other")[0]] == [200, 200]
        del database.keys["old"]

        cache.on_revocation("leadscout:keys:revoked", hash_key("old").encode())

        assert [get(cache, "old")[0], get(cache, "other")[0]] == [401, 200]
        assert database.calls == 3  # old, other, then old again: other came from the cache

    def test_resubscribing_forgets_every_key(self):
        database = Database({"key": WORKSPACE})
        cache = KeyCache(database.lookup)
        get(cache, "key")

        asyncio.run(cache.on_subscribed())
        get(cache, "key")

        assert database.calls == 2


class TestDatabaseDown:
    """A lookup that cannot reach PostgreSQL answers 503 ServiceUnavailable and caches nothing."""

    def test_503_problem_then_200_once_the_database_is_back(self):
        database = Database({"key": WORKSPACE})
        cache = KeyCache(database.lookup)
        database.down = True

        status, headers, body = get(cache, "key")
        database.down = False
        after = get(cache, "key")[0]

        assert (status, headers[b"content-type"], headers[b"retry-after"]) == (
            503,
            b"application/problem+json",
            b"1",
        )
        problem = json.loads(body)
        assert (problem["status"], problem["code"]) == (503, "ServiceUnavailable")
        assert (after, database.calls) == (200, 2)
