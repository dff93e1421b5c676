"""The command travels as sent: what the client left out is not written in on the way."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest

from schemas.api import InitiateOutboundRequest
from schemas.commands import InitiateOutbound
from worker import tasks
from worker.store.commands import _row, request_hash

MEDIA = {"type": "media", "mediaUrl": "https://cdn.acme.test/a.jpg", "mimeType": "image/jpeg"}
AS_SENT: dict[str, Any] = {
    "contactId": str(UUID(int=0xC0)),
    "template": {"templateId": str(UUID(int=0x7E))},
    "additionalMessages": [MEDIA, {**MEDIA, "caption": None}, {"type": "text", "text": "Hola"}],
    "context": {
        "notes": ["only notes"],
        "media": [{"url": "https://x.test/q.pdf", "mimeType": "a/b"}],
    },
    "optIn": {"nested": {"list": [1, 0.5, None]}},
    "campaignId": None,
}


def command(request: dict[str, Any]) -> InitiateOutbound:
    return InitiateOutbound(
        command_id=UUID(int=1),
        workspace_id=UUID(int=2),
        request=InitiateOutboundRequest.model_validate(request),
    )


def through_json(message: dict[str, Any]) -> InitiateOutbound:
    """What a worker (or a sweeper reading the payload column) parses."""
    return InitiateOutbound.model_validate(json.loads(json.dumps(message)))


class TestToMessage:
    """``to_message`` is the request as sent, and parsing it again keeps it that way."""

    def test_request_is_exactly_what_was_sent(self) -> None:
        assert command(AS_SENT).to_message() == {
            "commandId": str(UUID(int=1)),
            "workspaceId": str(UUID(int=2)),
            "request": AS_SENT,
        }

    def test_defaults_are_not_written_in(self) -> None:
        minimal = {"contactId": AS_SENT["contactId"], "template": AS_SENT["template"]}

        assert command(minimal).to_message()["request"] == minimal

    def test_parsing_the_message_again_gives_the_same_message(self) -> None:
        message = command(AS_SENT).to_message()

        assert through_json(message).to_message() == message

    def test_follow_ups_and_context_survive_as_sent(self) -> None:
        parsed = through_json(command(AS_SENT).to_message()).request

        assert [m.model_dump(mode="json", exclude_unset=True) for m in parsed.follow_ups] == (
            AS_SENT["additionalMessages"]
        )
        assert parsed.context is not None
        assert parsed.context.model_dump(mode="json", exclude_unset=True) == AS_SENT["context"]

    def test_defaults_still_apply_after_parsing(self) -> None:
        minimal = {"contactId": AS_SENT["contactId"], "template": AS_SENT["template"]}

        parsed = through_json(command(minimal).to_message())

        assert (parsed.request.template.parameters, parsed.request.force_send) == ([], False)


class TestWhereTheCommandIsWritten:
    """The Celery message and the payload column both carry ``to_message()``."""

    def test_published_message(self, monkeypatch: pytest.MonkeyPatch) -> None:
        sent: list[Any] = []

        def apply_async(args: tuple[Any, ...], **options: Any) -> None:
            sent.append(args)

        monkeypatch.setattr(tasks, "initiate_outbound", SimpleNamespace(apply_async=apply_async))

        tasks.publish(command(AS_SENT))

        assert sent == [(command(AS_SENT).to_message(),)]

    def test_payload_column(self) -> None:
        row = _row(command(AS_SENT), idempotency_key=None, body_hash=None)

        assert row["payload"] == command(AS_SENT).to_message()

    def test_hash_without_a_given_one_is_the_hash_of_the_body_as_sent(self) -> None:
        row = _row(command(AS_SENT), idempotency_key=None, body_hash=None)

        assert row["request_hash"] == request_hash(AS_SENT)
