"""FastAPI dependencies as ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Request
from sqlalchemy import Engine

from api_shim.intake import Intake


def _workspace_id(request: Request) -> UUID:
    workspace_id: UUID = request.scope["state"]["workspace_id"]
    return workspace_id


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


WorkspaceId = Annotated[UUID, Depends(_workspace_id)]
EngineDep = Annotated[Engine, Depends(_engine)]
IntakeDep = Annotated[Intake, Depends(_intake)]


def parse_uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


def problem_responses(*codes: Any) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem+json answers an operation can give."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(code.status, []).append(code.value)
    return {
        status: {
            "description": " / ".join(names),
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status, names in sorted(by_status.items())
    }
