"""SPEC 4.4: read a conversation, hand it off, close it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from sqlalchemy import Engine, RowMapping
from starlette.concurrency import run_in_threadpool

from api_shim.body import parsed_body, request_body_doc
from api_shim.deps import EngineDep, WorkspaceId, parse_uuid, problem_responses
from api_shim.problems import ApiProblem
from schemas import errors
from schemas._base import CamelInput
from schemas.errors import ErrorCode
from worker import lifecycle

router = APIRouter(
    prefix="/v1/workspaces/{workspaceId}/leadscout/conversations", tags=["conversations"]
)
COMMON = (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN, ErrorCode.CONVERSATION_NOT_FOUND)


class HandoffRequest(CamelInput):
    user_id: UUID


@router.get(
    "/{conversationId}",
    summary="A conversation with its template messages and follow-ups",
    responses=problem_responses(*COMMON),
)
async def get_conversation(
    workspaceId: str,
    conversationId: str,
    workspace_id: WorkspaceId,
    engine: EngineDep,
) -> dict[str, Any]:
    conversation_id = _conversation_id(conversationId)
    return await run_in_threadpool(_read, engine, workspace_id, conversation_id)


def _read(engine: Engine, workspace_id: UUID, conversation_id: UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        return lifecycle.detail(conn, _existing(conn, workspace_id, conversation_id))


@router.post(
    "/{conversationId}/handoff",
    summary="Hand the conversation to a human user",
    responses=problem_responses(
        *COMMON,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.CONVERSATION_CLOSED,
        ErrorCode.VALIDATION_ERROR,
        ErrorCode.HANDOFF_USER_NOT_FOUND,
        ErrorCode.HANDOFF_USER_INACTIVE,
    ),
    openapi_extra=request_body_doc(HandoffRequest),
)
async def hand_off(
    workspaceId: str,
    conversationId: str,
    request: Request,
    workspace_id: WorkspaceId,
    engine: EngineDep,
) -> dict[str, Any]:
    conversation_id = _conversation_id(conversationId)
    current = await run_in_threadpool(_find, engine, workspace_id, conversation_id)
    if current["status"] == "closed":
        raise errors.ConversationClosed()  # before the body check: SPEC 4.4's order
    _, body = await parsed_body(request, HandoffRequest)
    return await run_in_threadpool(_hand_off, engine, workspace_id, conversation_id, body.user_id)


def _hand_off(
    engine: Engine, workspace_id: UUID, conversation_id: UUID, user_id: UUID
) -> dict[str, Any]:
    with engine.begin() as conn:
        conversation = _existing(conn, workspace_id, conversation_id, lock=True)
        return lifecycle.detail(conn, lifecycle.hand_off(conn, conversation, user_id))


@router.post(
    "/{conversationId}/close",
    summary="Close the conversation, freeing the channel for the contact",
    responses=problem_responses(*COMMON, ErrorCode.PAYLOAD_TOO_LARGE),
)
async def close(
    workspaceId: str,
    conversationId: str,
    workspace_id: WorkspaceId,
    engine: EngineDep,
) -> dict[str, Any]:
    conversation_id = _conversation_id(conversationId)
    return await run_in_threadpool(_close, engine, workspace_id, conversation_id)


def _close(engine: Engine, workspace_id: UUID, conversation_id: UUID) -> dict[str, Any]:
    with engine.begin() as conn:
        conversation = _existing(conn, workspace_id, conversation_id, lock=True)
        return lifecycle.detail(conn, lifecycle.close(conn, conversation))


def _conversation_id(raw: str) -> UUID:
    parsed = parse_uuid(raw)
    if parsed is None:
        raise _not_found()
    return parsed


def _find(engine: Engine, workspace_id: UUID, conversation_id: UUID) -> RowMapping:
    with engine.connect() as conn:
        return _existing(conn, workspace_id, conversation_id)


def _existing(
    conn: Any, workspace_id: UUID, conversation_id: UUID, lock: bool = False
) -> RowMapping:
    conversation = lifecycle.find(conn, workspace_id, conversation_id, lock=lock)
    if conversation is None:
        raise _not_found()
    return conversation


def _not_found() -> ApiProblem:
    return ApiProblem(ErrorCode.CONVERSATION_NOT_FOUND, "No such conversation in this workspace.")
