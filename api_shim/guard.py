"""The checks that come before anything else on ``/v1``: API key, then body size.

An ASGI middleware rather than a FastAPI dependency because FastAPI parses the
JSON body before it resolves dependencies, and SPEC 4 wants the key checked
first, body validation included.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.problems import problem_response
from schemas.errors import ErrorCode

MAX_BODY_BYTES = 8 * 1024 * 1024
KEY_CACHE_S = 30.0


class BodyTooLarge(Exception):
    pass


class KeyCache:
    """API key → workspace, remembered briefly so each request needn't hit the database.

    A revoked key keeps working for at most ``KEY_CACHE_S`` in a running API process.
    """

    def __init__(self, lookup: Callable[[str], UUID | None]) -> None:
        self._lookup = lookup
        self._entries: dict[str, tuple[float, UUID | None]] = {}

    async def workspace_of(self, api_key: str) -> UUID | None:
        now = time.monotonic()
        cached = self._entries.get(api_key)
        if cached is not None and now - cached[0] < KEY_CACHE_S:
            return cached[1]
        workspace_id = await run_in_threadpool(self._lookup, api_key)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[api_key] = (now, workspace_id)
        return workspace_id


class GuardMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyCache) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        refusal = await self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self._within_size(scope, receive, send)

    async def _refusal(self, scope: Scope) -> Any:
        headers = dict(scope["headers"])
        api_key = headers.get(b"x-api-key", b"").decode("latin-1")
        workspace_id = await self.keys.workspace_of(api_key) if api_key else None
        if workspace_id is None:
            return problem_response(ErrorCode.UNAUTHORIZED, "A valid X-API-Key header is required.")
        is_workspace_path, path_workspace = _path_workspace(scope["path"])
        if is_workspace_path and path_workspace != str(workspace_id):
            return problem_response(ErrorCode.FORBIDDEN, "The API key is not for this workspace.")
        scope.setdefault("state", {})["workspace_id"] = workspace_id
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _too_large()
        return None

    async def _within_size(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Counts streamed bytes too: a chunked body has no Content-Length to trust."""
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large()(scope, receive, send)


def _too_large() -> Any:
    return problem_response(ErrorCode.PAYLOAD_TOO_LARGE, "The body is larger than 8 MiB.")


def _path_workspace(path: str) -> tuple[bool, str | None]:
    """Whether this is ``/v1/workspaces/{workspaceId}...``, and the id if well-formed."""
    parts = path.split("/")
    if len(parts) < 4 or parts[2] != "workspaces":
        return False, None
    try:
        return True, str(UUID(parts[3]))
    except ValueError:
        return True, None
