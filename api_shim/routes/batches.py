"""SPEC 4.3: a campaign's fan-out, and where its batch stands."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api_shim import batch_intake
from api_shim.batch_process import BatchIntakeProcess
from api_shim.body import request_body_doc
from api_shim.deps import EngineDep, IdPath, WorkspaceId, parse_uuid
from api_shim.openapi import link, problem_responses
from api_shim.problems import ApiProblem
from schemas.batches import BatchAccepted, BatchStatus, InitiateOutboundBatchRequest
from schemas.errors import ErrorCode

router = APIRouter(prefix="/v1/workspaces/{workspaceId}/leadscout", tags=["batches"])


def batch_url(workspace_id: Any, batch_id: Any) -> str:
    return f"/v1/workspaces/{workspace_id}/leadscout/batches/{batch_id}"


ACCEPTED_DOC = {
    "description": "Every accepted item is a durable command; the invalid ones are listed.",
    "model": BatchAccepted,
    "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
    "links": {
        "GetBatch": link("getBatch", "Where the batch stands.", batchId="$response.body#/batchId")
    },
}


@router.post(
    "/outbound/batch",
    operation_id="initiateOutboundBatch",
    summary="Initiate outbound conversations with up to 10,000 leads of a campaign",
    status_code=202,
    response_model=BatchAccepted,
    responses={
        202: ACCEPTED_DOC,
        **problem_responses(ErrorCode.VALIDATION_ERROR, ErrorCode.IDEMPOTENCY_KEY_REUSED),
    },
    openapi_extra=request_body_doc(InitiateOutboundBatchRequest),
)
async def initiate_outbound_batch(
    workspaceId: str,
    request: Request,
    workspace_id: WorkspaceId,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            description="The same key with the same body within 24 h answers the same batch.",
        ),
    ] = None,
) -> JSONResponse:
    intake: BatchIntakeProcess = request.app.state.batch_intake
    answer = await intake.accept(workspace_id, await request.body(), idempotency_key)
    location = batch_url(workspace_id, answer["batchId"])
    return JSONResponse(answer, status_code=202, headers={"Location": location})


@router.get(
    "/batches/{batchId}",
    operation_id="getBatch",
    summary="A batch's items by status, and its failures by error code",
    response_model=BatchStatus,
    responses=problem_responses(ErrorCode.BATCH_NOT_FOUND),
)
async def get_batch(
    workspaceId: str,
    batchId: IdPath,
    workspace_id: WorkspaceId,
    engine: EngineDep,
) -> JSONResponse:
    batch_id = parse_uuid(batchId)
    status = None
    if batch_id is not None:
        status = await run_in_threadpool(batch_intake.status, engine, workspace_id, batch_id)
    if status is None:
        raise ApiProblem(ErrorCode.BATCH_NOT_FOUND, "No such batch in this workspace.")
    return JSONResponse(status.model_dump(mode="json"))
