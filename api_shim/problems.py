"""Every error leaves as application/problem+json with a code (SPEC 4)."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.errors import ErrorCode, Problem, problem_body

logger = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(
    code: ErrorCode, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        problem_body(code, detail, **extra),
        status_code=code.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


PROBLEM_ORDER = ("type", "title", "status", "detail", "code")


def in_order(problem: dict[str, Any]) -> dict[str, Any]:
    """The RFC 9457 members first, then the extras: the same bytes whether the problem
    comes fresh from a worker or back from jsonb, which keeps its own key order."""
    head = {name: problem[name] for name in PROBLEM_ORDER if name in problem}
    return {**head, **dict(sorted((k, v) for k, v in problem.items() if k not in head))}


def as_response(problem: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        in_order(problem), status_code=int(problem["status"]), media_type=PROBLEM_JSON
    )


class DependencyUnavailable(Exception):
    """PostgreSQL or Redis was unreachable in another process of ours (the batch intake),
    which can report it only by value: answered as the error itself would be."""


class ApiProblem(Problem):
    """A problem raised by the API itself, with any code of SPEC 4's table."""

    def __init__(self, code: ErrorCode, detail: str | None = None, **extra: Any) -> None:
        self.code = code  # type: ignore[misc]
        super().__init__(detail, **extra)


def validation_errors(errors: list[Any]) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in errors]


def validation_problem(errors: list[Any]) -> JSONResponse:
    return problem_response(
        ErrorCode.VALIDATION_ERROR,
        "The request body is not valid.",
        errors=validation_errors(errors),
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return as_response(exc.as_problem())

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _model_validation(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_problem(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 405:
            return problem_response(
                ErrorCode.METHOD_NOT_ALLOWED,
                f"{request.method} is not allowed here.",
                headers=dict(exc.headers or {}),
            )
        return problem_response(ErrorCode.NOT_FOUND, "No such resource.")

    @app.exception_handler(OperationalError)
    @app.exception_handler(RedisError)
    @app.exception_handler(DependencyUnavailable)
    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("api.dependency_unavailable", error=type(exc).__name__)
        return problem_response(
            ErrorCode.SERVICE_UNAVAILABLE,
            "The database or the broker is unreachable; nothing was accepted. Retry later.",
            headers={"Retry-After": "1"},
        )
