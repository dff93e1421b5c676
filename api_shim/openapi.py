"""What the OpenAPI document says beyond what FastAPI derives from the routes.

The routes read their bodies themselves and every error leaves as problem+json,
so FastAPI's own guess (a JSON 422 ``HTTPValidationError`` on every operation
with parameters) would document an answer the API never gives; it is replaced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from api_shim.problems import PROBLEM_JSON
from schemas.errors import ErrorCode

SCHEMAS = "#/components/schemas/"
PROBLEM_REF = {"$ref": SCHEMAS + "Problem"}
UUID_STRING = {"type": "string", "format": "uuid"}
WORKSPACE_ID = {**UUID_STRING, "description": "The API key's workspace; any other answers 403."}

# What the guard (key, size) and the dependency handler can answer on any /v1 operation.
GUARD_CODES = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.FORBIDDEN,
    ErrorCode.PAYLOAD_TOO_LARGE,
    ErrorCode.SERVICE_UNAVAILABLE,
)

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (when the dependency handler answers).",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
    }
}

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "RFC 9457 problem details. The members after `code` appear only with the codes "
        "that carry them; other members may be added."
    ),
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
        "errors": {
            "description": "ValidationError: what is wrong, and where.",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["loc", "msg"],
                "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"},
                },
            },
        },
        "commandId": {**UUID_STRING, "description": "IdempotencyKeyReused: the key's command."},
        "batchId": {**UUID_STRING, "description": "IdempotencyKeyReused (batch): the key's batch."},
        "templateStatus": {"type": "string", "description": "TemplateNotApproved."},
        "expected": {"type": "integer", "description": "TemplateParametersMismatch."},
        "got": {"type": "integer", "description": "TemplateParametersMismatch."},
        "channelId": {**UUID_STRING, "description": "ChannelDailyLimitReached (explicit channel)."},
        "blockingConversationId": {**UUID_STRING, "description": "ActiveConversationExists."},
        "blockingConversation": {"$ref": SCHEMAS + "BlockingConversation"},
        "blockingConversationIds": {
            "description": "AllProviderChannelsOccupied, in candidate order.",
            "type": "array",
            "items": UUID_STRING,
        },
    },
    "additionalProperties": True,
}

ROUTING_NOTE = (
    "\n\nEvery error is `application/problem+json` (RFC 9457) with a `code`. Paths that match "
    "no operation answer 404 `NotFound`; a method a path does not offer answers 405 "
    "`MethodNotAllowed` with `Allow`."
)


def problem_responses(*codes: ErrorCode) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem+json answers an operation can give, by status."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        names = by_status.setdefault(code.status, [])
        if code.value not in names:
            names.append(code.value)
    return {status: _problem_response(status, names) for status, names in sorted(by_status.items())}


def _problem_response(status: int, names: list[str]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": " / ".join(names),
        "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
    }
    if status == ErrorCode.SERVICE_UNAVAILABLE.status:
        response["headers"] = RETRY_AFTER
    return response


def link(operation_id: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to another operation of the same workspace."""
    return {
        "operationId": operation_id,
        "description": description,
        "parameters": {"workspaceId": "$request.path.workspaceId", **parameters},
    }


def install(app: FastAPI, *models: type[BaseModel]) -> None:
    """Completes the document once, on first request: ``models`` are the schemas that the
    routes name by ``$ref`` without FastAPI seeing them (bodies read by hand, problem members)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _completed(generate(), models)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _completed(document: dict[str, Any], models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    components = document.setdefault("components", {}).setdefault("schemas", {})
    _drop_validation_guesses(document, components)
    _document_the_guard(document)
    components["Problem"] = PROBLEM_SCHEMA
    for model in models:
        _add_model(components, model)
    # The store keeps a command's error as JSON; on the wire it is always a problem.
    components["CommandStatus"]["properties"]["error"] = {"anyOf": [PROBLEM_REF, {"type": "null"}]}
    for parameter in _parameters(document):
        _plain_header(parameter)
    document["info"]["description"] += ROUTING_NOTE
    return document


def _operations(document: dict[str, Any], prefix: str = "/") -> Iterator[dict[str, Any]]:
    for path, path_item in document["paths"].items():
        if path.startswith(prefix):
            yield from path_item.values()


def _parameters(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for operation in _operations(document):
        yield from operation.get("parameters", [])


def _document_the_guard(document: dict[str, Any]) -> None:
    """The guard sits in front of every /v1 operation: its answers, its path parameter."""
    guard = {str(status): answer for status, answer in problem_responses(*GUARD_CODES).items()}
    for operation in _operations(document, "/v1/"):
        operation["responses"] = dict(sorted({**guard, **operation["responses"]}.items()))
        for parameter in operation.get("parameters", []):
            if (parameter["in"], parameter["name"]) == ("path", "workspaceId"):
                parameter["schema"] = WORKSPACE_ID


def _drop_validation_guesses(document: dict[str, Any], components: dict[str, Any]) -> None:
    guess = {"$ref": SCHEMAS + "HTTPValidationError"}
    for operation in _operations(document):
        content = operation["responses"].get("422", {}).get("content", {})
        if content.get("application/json", {}).get("schema") == guess:
            del operation["responses"]["422"]
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _add_model(components: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(by_alias=True, ref_template=SCHEMAS + "{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema


def _plain_header(parameter: dict[str, Any]) -> None:
    """An optional header is absent or a string: ``anyOf [string, null]`` says it can be null."""
    schema = parameter["schema"]
    any_of = schema.get("anyOf", [])
    if parameter["in"] == "header" and {"type": "null"} in any_of:
        (string,) = [option for option in any_of if option != {"type": "null"}]
        del schema["anyOf"]
        schema.update(string)
