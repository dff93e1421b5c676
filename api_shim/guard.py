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

import structlog
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api_shim.problems import problem_response
from schemas.errors import ErrorCode
from worker.store.workspaces import hash_key

logger = structlog.get_logger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
KEY_CACHE_S = 30.0


class KeyCache:
    """API key → workspace, remembered briefly so each request needn't hit the database.

    Entries are held by the key's hash, the form a revocation names them by
    (``workspaces.REVOKED_KEYS_CHANNEL``). A revoked key stops working as soon as its
    revocation arrives; if it never arrives, after at most ``KEY_CACHE_S``.
    """

    def __init__(self, lookup: Callable[[str], UUID | None]) -> None:
        self._lookup = lookup
        self._entries: dict[str, tuple[float, UUID | None]] = {}

    async def workspace_of(self, api_key: str) -> UUID | None:
        now = time.monotonic()
        key_hash = hash_key(api_key)
        cached = self._entries.get(key_hash)
        if cached is not None and now - cached[0] < KEY_CACHE_S:
            return cached[1]
        workspace_id = await run_in_threadpool(self._lookup, api_key)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[key_hash] = (now, workspace_id)
        return workspace_id

    def revoke(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        self._entries.clear()

    def on_revocation(self, channel: str, key_hash: bytes) -> None:
        """A message of ``REVOKED_KEYS_CHANNEL``."""
        self.revoke(key_hash.decode())

    async def on_subscribed(self) -> None:
        """Revocations sent while no subscription listened are lost: forget everything."""
        self.clear()


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
        if _declared_length(scope) is None:
            # A streamed body is read whole here, before any route looks at the request:
            # SPEC 4.4 wants 413 before 404/409 even on routes that read the body late or never.
            body = await _read_within_limit(receive)
            if body is None:
                await _too_large()(scope, receive, send)
                return
            receive = _replaying(body, receive)
        await self.app(scope, receive, send)

    async def _refusal(self, scope: Scope) -> Any:
        headers = dict(scope["headers"])
        api_key = headers.get(b"x-api-key", b"").decode("latin-1")
        try:
            workspace_id = await self.keys.workspace_of(api_key) if api_key else None
        except OperationalError as exc:
            logger.warning("api.key_lookup_unavailable", error=type(exc).__name__)
            return _unavailable()
        if workspace_id is None:
            return problem_response(ErrorCode.UNAUTHORIZED, "A valid X-API-Key header is required.")
        is_workspace_path, path_workspace = _path_workspace(scope["path"])
        if is_workspace_path and path_workspace != str(workspace_id):
            return problem_response(ErrorCode.FORBIDDEN, "The API key is not for this workspace.")
        scope.setdefault("state", {})["workspace_id"] = workspace_id
        declared = _declared_length(scope)
        if declared is not None and declared > MAX_BODY_BYTES:
            return _too_large()
        return None


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length the server framed the body by; None for a chunked body.

    With Transfer-Encoding the server reads chunks and ignores any Content-Length.
    """
    headers = dict(scope["headers"])
    declared = headers.get(b"content-length")
    if b"transfer-encoding" in headers or declared is None or not declared.isdigit():
        return None
    return int(declared)


async def _read_within_limit(receive: Receive) -> Message | None:
    """The whole body as one message, or None as soon as it passes 8 MiB (the rest unread).

    A disconnect is handed on as it came, so the app learns of it as it would have.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY_BYTES:
            return None
        if not message.get("more_body", False):
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


def _replaying(first: Message, receive: Receive) -> Receive:
    """``receive`` that hands out ``first``, then whatever the server sends next (a disconnect)."""
    pending = [first]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _unavailable() -> Any:
    return problem_response(
        ErrorCode.SERVICE_UNAVAILABLE,
        "The database is unreachable, so the API key cannot be checked. Retry later.",
        headers={"Retry-After": "1"},
    )


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
