"""Reading a JSON body by hand, so that checks the SPEC orders before it run first."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from api_shim.problems import ApiProblem, validation_errors
from schemas.errors import ErrorCode

M = TypeVar("M", bound=BaseModel)


async def parsed_body(request: Request, model: type[M]) -> tuple[Any, M]:
    """(the parsed JSON, the validated model); 422 ValidationError on either failing."""
    raw = await request.body()
    try:
        data = json.loads(raw, parse_constant=_refuse_constant) if raw else None
        _storable(data)
    except (ValueError, RecursionError) as exc:
        raise _invalid([{"loc": ["body"], "msg": f"Invalid JSON: {exc}"}]) from None
    try:
        return data, model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ["body", *e["loc"]]} for e in exc.errors()]
        raise _invalid(validation_errors(errors)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _storable(data: Any) -> None:
    """PostgreSQL's jsonb holds neither NUL characters nor lone surrogates: refuse them here."""
    pending = [data]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise ValueError("strings must not contain NUL (\\u0000)")
            item.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate


def _invalid(errors: list[dict[str, Any]]) -> ApiProblem:
    return ApiProblem(ErrorCode.VALIDATION_ERROR, "The request body is not valid.", errors=errors)


def request_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the endpoint reads itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
            },
        }
    }
