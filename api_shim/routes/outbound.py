"""SPEC 4.1 / 4.2: initiate, and read a command's status."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import Field

from api_shim.body import parsed_body, request_body_doc
from api_shim.deps import IdPath, IntakeDep, WorkspaceId, parse_uuid
from api_shim.intake import Status
from api_shim.openapi import link, problem_responses
from api_shim.problems import ApiProblem, as_response, in_order
from schemas._base import CamelModel
from schemas.api import (
    CommandState,
    CommandStatus,
    InitiateOutboundRequest,
    InitiateOutboundResult,
)
from schemas.errors import REJECTIONS, ErrorCode

router = APIRouter(prefix="/v1/workspaces/{workspaceId}/leadscout", tags=["outbound"])


class Accepted(CamelModel):
    """The 202 body: where to learn the command's outcome."""

    command_id: UUID
    status: CommandState
    status_url: str = Field(description="The command's status path; also in `Location`.")


RESULT_LINKS = {
    "GetCommand": link(
        "getCommand", "The command's status.", commandId="$response.body#/commandId"
    ),
    "GetConversation": link(
        "getConversation", "The conversation.", conversationId="$response.body#/conversation/id"
    ),
    "HandOffConversation": link(
        "handOffConversation",
        "Hand the conversation to a user.",
        conversationId="$response.body#/conversation/id",
    ),
    "CloseConversation": link(
        "closeConversation",
        "Close the conversation.",
        conversationId="$response.body#/conversation/id",
    ),
}
RESULT_CONVERSATION_LINK = link(
    "getConversation",
    "The conversation of a succeeded command.",
    conversationId="$response.body#/result/conversation/id",
)
ACCEPTED_DOC = {
    "description": (
        "Accepted and still running (`Prefer: respond-async`, or the sync wait ran out); an "
        "async replay of a finished command answers its final status here too."
    ),
    "model": Accepted,
    "headers": {
        "Location": {"required": True, "schema": {"type": "string"}},
        "Preference-Applied": {
            "description": "Present when the answer honours `Prefer: respond-async`.",
            "required": False,
            "schema": {"type": "string", "enum": ["respond-async"]},
        },
    },
    "links": {"GetCommand": RESULT_LINKS["GetCommand"]},
}


@router.post(
    "/outbound",
    operation_id="initiateOutbound",
    summary="Initiate an outbound conversation with a known lead",
    response_model=InitiateOutboundResult,
    responses={
        200: {"links": RESULT_LINKS},
        202: ACCEPTED_DOC,
        **problem_responses(
            ErrorCode.VALIDATION_ERROR,
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            *REJECTIONS,
        ),
    },
    openapi_extra=request_body_doc(InitiateOutboundRequest),
)
async def initiate_outbound(
    workspaceId: str,
    request: Request,
    workspace_id: WorkspaceId,
    intake: IntakeDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="The same key with the same body within 24 h answers the same command.",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(alias="Prefer", description="`respond-async` answers 202 at once."),
    ] = None,
) -> Response:
    raw, body = await parsed_body(request, InitiateOutboundRequest)
    respond_async = _prefers_async(prefer)
    status = await intake.submit(workspace_id, raw, body, idempotency_key, wait=not respond_async)
    return _answer(workspace_id, status, respond_async)


def in_spec_order(result: Any) -> dict[str, Any]:
    """SPEC 4.1's member order, whether the result came from a worker or back from jsonb."""
    return InitiateOutboundResult.model_validate(result).model_dump(mode="json")


def _prefers_async(prefer: str | None) -> bool:
    tokens = (part.strip().split("=")[0].lower() for part in (prefer or "").split(","))
    return "respond-async" in tokens


def status_url(workspace_id: Any, command_id: Any) -> str:
    return f"/v1/workspaces/{workspace_id}/leadscout/commands/{command_id}"


def _answer(workspace_id: Any, status: Status, respond_async: bool) -> Response:
    if not respond_async and status.finished:
        if status.status == "succeeded":
            return JSONResponse(in_spec_order(status.result))
        return as_response(status.error or {})
    url = status_url(workspace_id, status.command_id)
    headers = {"Location": url}
    if respond_async:
        headers["Preference-Applied"] = "respond-async"
    body = Accepted(command_id=status.command_id, status=status.status, status_url=url)
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)


@router.get(
    "/commands/{commandId}",
    operation_id="getCommand",
    summary="A command's status and outcome",
    response_model=CommandStatus,
    responses={
        200: {"links": {"GetConversation": RESULT_CONVERSATION_LINK}},
        **problem_responses(ErrorCode.COMMAND_NOT_FOUND),
    },
)
async def get_command(
    workspaceId: str,
    commandId: IdPath,
    workspace_id: WorkspaceId,
    intake: IntakeDep,
) -> JSONResponse:
    command_id = parse_uuid(commandId)
    status = await intake.status_in(workspace_id, command_id) if command_id else None
    if status is None:
        raise ApiProblem(ErrorCode.COMMAND_NOT_FOUND, "No such command in this workspace.")
    return JSONResponse(
        {
            "commandId": str(status.command_id),
            "status": status.status,
            "result": in_spec_order(status.result) if status.result else None,
            "error": in_order(status.error) if status.error else None,
        }
    )
