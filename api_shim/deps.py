"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import Depends, Path, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy import Engine

from api_shim.intake import Intake
from api_shim.openapi import problem_responses as problem_responses  # its old home

# The guard middleware checks the key before anything else; this only documents it.
API_KEY = APIKeyHeader(
    name="X-API-Key",
    scheme_name="ApiKey",
    description="The workspace's API key.",
    auto_error=False,
)


# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in the threadpool, a thread hop per request for a dictionary lookup.
async def _workspace_id(request: Request, _key: Annotated[str | None, Security(API_KEY)]) -> UUID:
    workspace_id: UUID = request.scope["state"]["workspace_id"]
    return workspace_id


async def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


WorkspaceId = Annotated[UUID, Depends(_workspace_id)]
# A path id stays a string: a malformed one answers 404, never 422.
IdPath = Annotated[str, Path(json_schema_extra={"format": "uuid"})]
EngineDep = Annotated[Engine, Depends(_engine)]
IntakeDep = Annotated[Intake, Depends(_intake)]


def parse_uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None
