"""SPEC 4.4: read a conversation, hand it off, close it."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from sqlalchemy import Engine, RowMapping
from starlette.concurrency import run_in_threadpool

from api_shim.body import parsed_body, request_body_doc
from api_shim.deps import EngineDep, IdPath, WorkspaceId, parse_uuid
from api_shim.openapi import link, problem_responses
from api_shim.problems import ApiProblem
from schemas import errors
from schemas._base import CamelInput, CamelModel
from schemas.api import ConversationView
from schemas.errors import ErrorCode
from worker import lifecycle

router = APIRouter(
    prefix="/v1/workspaces/{workspaceId}/leadscout/conversations", tags=["conversations"]
)
NO_CONVERSATION = ErrorCode.CONVERSATION_NOT_FOUND


class HandoffRequest(CamelInput):
    user_id: UUID


class TemplateMessageView(CamelModel):
    kind: str
    body: str
    status: str
    template_id: UUID | None
    created_at: datetime


class FollowUpView(CamelModel):
    position: int
    content: dict[str, Any]
    status: str


class ConversationDetail(ConversationView):
    """SPEC 4.4's flat object; `context` and `optIn` exactly as sent."""

    messages: list[TemplateMessageView]
    follow_ups: list[FollowUpView]
    context: dict[str, Any] | None
    opt_in: dict[str, Any] | None


def _answer_doc(*next_steps: str) -> dict[int | str, dict[str, Any]]:
    """The 200 answer (the flat object) with links to the conversation's other operations."""
    steps = {
        "GetConversation": ("getConversation", "The conversation."),
        "HandOffConversation": ("handOffConversation", "Hand it to a user."),
        "CloseConversation": ("closeConversation", "Close it."),
    }
    links = {name: link(*steps[name], conversationId="$response.body#/id") for name in next_steps}
    return {200: {"model": ConversationDetail, "links": links}}


@router.get(
    "/{conversationId}",
    operation_id="getConversation",
    summary="A conversation with its template messages and follow-ups",
    response_model=None,
    responses={
        **_answer_doc("HandOffConversation", "CloseConversation"),
        **problem_responses(NO_CONVERSATION),
    },
)
async def get_conversation(
    workspaceId: str,
    conversationId: IdPath,
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
    operation_id="handOffConversation",
    summary="Hand the conversation to a human user",
    response_model=None,
    responses={
        **_answer_doc("GetConversation", "CloseConversation"),
        **problem_responses(
            NO_CONVERSATION,
            ErrorCode.CONVERSATION_CLOSED,
            ErrorCode.VALIDATION_ERROR,
            ErrorCode.HANDOFF_USER_NOT_FOUND,
            ErrorCode.HANDOFF_USER_INACTIVE,
        ),
    },
    openapi_extra=request_body_doc(HandoffRequest),
)
async def hand_off(
    workspaceId: str,
    conversationId: IdPath,
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
    operation_id="closeConversation",
    summary="Close the conversation, freeing the channel for the contact",
    response_model=None,
    responses={
        **_answer_doc("GetConversation", "HandOffConversation"),
        **problem_responses(NO_CONVERSATION),
    },
)
async def close(
    workspaceId: str,
    conversationId: IdPath,
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
