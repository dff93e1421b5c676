"""Batch intake (SPEC 4.3): sort the items, record the batch durably, publish, answer.

Everything here is blocking (10,000 validations, one transaction, the broker): it runs in the
batch intake process (``api_shim.batch_process``), away from the API's event loop and GIL.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import structlog
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine

from api_shim.body import ItemErrors, body_hash
from api_shim.intake import BROKER_UNAVAILABLE
from api_shim.problems import ApiProblem
from schemas.batches import BatchAccepted, BatchStatus, InitiateOutboundBatchRequest, InvalidItem
from schemas.commands import InitiateOutbound
from schemas.errors import ErrorCode
from worker import tasks
from worker.store import batches
from worker.store.batches import NewBatch, StoredBatch

logger = structlog.get_logger(__name__)

INVALID_ITEMS = TypeAdapter(list[InvalidItem])


def sort_items(
    workspace_id: UUID, body: InitiateOutboundBatchRequest, refused: ItemErrors | None = None
) -> tuple[list[InitiateOutbound], list[dict[str, Any]]]:
    """The commands of the valid items, in order, and the invalid items with their errors;
    ``refused``: the items that parsing found holding a value no request may hold."""
    accepted: list[InitiateOutbound] = []
    invalid: list[dict[str, Any]] = []
    refused = refused or {}
    for index, item in enumerate(body.items):
        if index in refused:
            invalid.append({"index": index, "errors": refused[index]})
            continue
        try:
            request = body.item_request(item)
        except ValidationError as exc:
            invalid.append({"index": index, "errors": _errors_at(index, exc)})
            continue
        accepted.append(
            InitiateOutbound(command_id=uuid4(), workspace_id=workspace_id, request=request)
        )
    return accepted, invalid


def _errors_at(index: int, exc: ValidationError) -> list[dict[str, Any]]:
    """The 422 ValidationError's ``errors`` shape, located in the body."""
    return [{"loc": ["body", "items", index, *e["loc"]], "msg": e["msg"]} for e in exc.errors()]


def accept(
    engine: Engine,
    workspace_id: UUID,
    raw_body: Any,
    body: InitiateOutboundBatchRequest,
    idempotency_key: str | None,
    refused: ItemErrors | None = None,
) -> dict[str, Any]:
    """The 202 body once every accepted item is a durable command and was published;
    a replay of the same key and body answers the first call's."""
    accepted, invalid = sort_items(workspace_id, body, refused)
    batch = NewBatch(
        id=uuid4(),
        workspace_id=workspace_id,
        campaign_id=body.campaign_id,
        commands=accepted,
        invalid=invalid,
        request_hash=body_hash(raw_body),
    )
    structlog.contextvars.bind_contextvars(batch_id=str(batch.id), workspace_id=str(workspace_id))
    with engine.begin() as conn:
        holder = batches.record(conn, batch, idempotency_key)
    if holder is None:
        _publish(engine, batch)
        holder = StoredBatch(batch.id, batch.request_hash, len(accepted), invalid)
    elif holder.request_hash != batch.request_hash:
        raise ApiProblem(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            "This Idempotency-Key was used with another body.",
            batchId=str(holder.id),
        )
    return _answer(holder)


def _answer(batch: StoredBatch) -> dict[str, Any]:
    """The same bytes for a first call and a replay (jsonb keeps no member order)."""
    invalid = INVALID_ITEMS.validate_python(batch.invalid)
    return BatchAccepted(batch_id=batch.id, accepted=batch.total, invalid=invalid).model_dump(
        mode="json"
    )


def _publish(engine: Engine, batch: NewBatch) -> None:
    """Publishes the batch's commands chunk by chunk. With the broker down before the first
    chunk left, takes the batch back (503); after, keeps it: the commands are durable and
    the command sweeper (SPEC 5.2) publishes the rest."""
    ids = [command.command_id for command in batch.commands]
    sent = 0
    try:
        for chunk in tasks.chunks(ids):
            tasks.publish_chunk(chunk)
            sent += 1
    except BROKER_UNAVAILABLE as exc:
        if sent:
            logger.warning("batch.publish_incomplete", chunks_sent=sent, error=type(exc).__name__)
            return
        logger.warning("batch.publish_failed", error=type(exc).__name__)
        with engine.begin() as conn:
            batches.discard(conn, batch.id)
        raise ApiProblem(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The broker is unreachable; nothing was accepted. Retry later.",
        ) from None


def status(engine: Engine, workspace_id: UUID, batch_id: UUID) -> BatchStatus | None:
    with engine.connect() as conn:
        return batches.status(conn, workspace_id, batch_id)
