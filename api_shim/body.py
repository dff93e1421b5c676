"""Reading a JSON body by hand, so that checks the SPEC orders before it run first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api_shim.problems import ApiProblem, validation_errors
from schemas.errors import ErrorCode

M = TypeVar("M", bound=BaseModel)


# Above this size a body is parsed in the thread pool: a 10,000-item batch takes a second
# of CPU, which on the event loop would hold up every other request of this process.
_PARSE_IN_THREAD_BYTES = 64 * 1024


async def parsed_body(request: Request, model: type[M]) -> tuple[Any, M]:
    """(the parsed JSON, the validated model); 422 ValidationError on either failing."""
    raw = await request.body()
    if len(raw) > _PARSE_IN_THREAD_BYTES:
        return await run_in_threadpool(_parse, raw, model)
    return _parse(raw, model)


def _parse(raw: bytes, model: type[M]) -> tuple[Any, M]:
    try:
        data = json.loads(raw, **_JSON_OPTIONS) if raw else None
    except (ValueError, RecursionError) as exc:
        raise _invalid([{"loc": ["body"], "msg": f"Invalid JSON: {exc}"}]) from None
    if unstorable := _unstorable(data):
        raise _invalid(unstorable)
    try:
        return data, model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ["body", *e["loc"]]} for e in exc.errors()]
        raise _invalid(validation_errors(errors)) from None


@dataclass(frozen=True, slots=True)
class _InexactNumber:
    """A number literal the stored JSON would not hold as written; refused at its location."""

    literal: str

    @property
    def problem(self) -> str:
        shown = self.literal if len(self.literal) <= 40 else self.literal[:37] + "..."
        return (
            f"the number {shown} cannot be kept exactly as sent (beyond a 64-bit float's "
            "range or precision, or an integer of more than 4300 digits); send it as a string"
        )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _exact_float(literal: str) -> float | _InexactNumber:
    """The float, if its shortest text (what gets stored) has the literal's decimal value.

    0.1 and 1e300 pass; 1e400 (infinite as a double), 1e-400 (zero) and
    0.10000000000000000001 (rounded) would be changed silently, so they are refused.
    """
    value = float(literal)
    stored = repr(value)
    if stored == literal:  # the common case, without the cost of two Decimals
        return value
    try:
        exact = Decimal(stored) == Decimal(literal)
    except InvalidOperation:  # an exponent beyond even Decimal's range
        exact = False
    return value if exact else _InexactNumber(literal)


def _whole_number(literal: str) -> int | _InexactNumber:
    """Python refuses integer text past sys.get_int_max_str_digits() (4300 by default)."""
    try:
        return int(literal)
    except ValueError:
        return _InexactNumber(literal)


_JSON_OPTIONS: dict[str, Any] = {
    "parse_constant": _refuse_constant,
    "parse_float": _exact_float,
    "parse_int": _whole_number,
}

# A location as a chain of (parent, key) pairs: built in O(1) per member, and only
# turned into a list for the few members that are refused.
_Path = tuple[Any, Any] | None


def _unstorable(data: Any) -> list[dict[str, Any]]:
    """What PostgreSQL's jsonb would not keep as sent, in document order: numbers a double
    changes, NUL characters, lone surrogates."""
    errors: list[dict[str, Any]] = []
    pending: list[tuple[_Path, Any]] = [(None, data)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, dict):
            for key, value in reversed(item.items()):
                # A refused key is reported at its object: its own location could not be sent.
                pending.append((path, key) if _problem(key) else ((path, key), value))
        elif isinstance(item, list):
            # Only containers and refused members are walked on: a 8 MiB list stays cheap.
            walked = [((path, i), v) for i, v in enumerate(item) if _walked_on(v)]
            pending += reversed(walked)
        elif problem := _problem(item):
            errors.append({"loc": _loc(path), "msg": problem})
    return errors


def _walked_on(item: Any) -> bool:
    return isinstance(item, (dict, list)) or _problem(item) is not None


def _problem(item: Any) -> str | None:
    if isinstance(item, _InexactNumber):
        return item.problem
    if not isinstance(item, str):
        return None
    if "\x00" in item:
        return "strings must not contain NUL (\\u0000)"
    try:
        item.encode("utf-8")
    except UnicodeEncodeError:
        return "strings must not contain lone surrogates"
    return None


def _loc(path: _Path) -> list[Any]:
    keys: list[Any] = []
    while path is not None:
        path, key = path
        keys.append(key)
    return ["body", *reversed(keys)]


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
