"""Reading a JSON body by hand, so that checks the SPEC orders before it run first."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from api_shim.problems import ApiProblem, validation_errors
from schemas.errors import ErrorCode
from worker.store.commands import request_hash

M = TypeVar("M", bound=BaseModel)


# Above this size a body is parsed in the thread pool: a 10,000-item batch takes a second
# of CPU, which on the event loop would hold up every other request of this process.
_PARSE_IN_THREAD_BYTES = 64 * 1024


# Arrays and objects nest at most this deep, the body itself being level 1. pydantic's
# serializer gives up past 255 levels (a 500 when the command is stored), json.loads near
# 1,000; no request of SPEC 4 needs more than a few.
MAX_NESTING = 128
TOO_DEEP = f"nested deeper than {MAX_NESTING} levels of arrays and objects"

# A batch item's own errors, by its index in ``items``.
ItemErrors = dict[int, list[dict[str, Any]]]


async def parsed_body(request: Request, model: type[M]) -> tuple[Any, M]:
    """(the parsed JSON, the validated model); 422 ValidationError on either failing.
    (A batch body is parsed in the batch intake process: ``api_shim.batch_process``.)"""
    raw = await request.body()
    if len(raw) > _PARSE_IN_THREAD_BYTES:
        data, body, _ = await run_in_threadpool(parse, raw, model)
    else:
        data, body, _ = parse(raw, model)
    return data, body


def parse(raw: bytes, model: type[M], items_apart: bool = False) -> tuple[Any, M, ItemErrors]:
    """The body's JSON, the model and (``items_apart``) the batch items' own refusals;
    raises the 422 ValidationError problem, and nothing else, for any other bytes."""
    try:
        data = json.loads(raw, **_JSON_OPTIONS) if raw else None
    except (ValueError, RecursionError) as exc:
        raise _invalid([{"loc": ["body"], "msg": f"Invalid JSON: {exc}"}]) from None
    whole_call, item_errors = _sorted_refusals(_refusals(data), items_apart)
    if whole_call:
        raise _invalid(whole_call)
    try:
        return data, model.model_validate(data), item_errors
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


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A member no body may hold; ``too_deep`` ones say nothing of any one item."""

    loc: list[Any]
    msg: str
    too_deep: bool = False

    @property
    def item_index(self) -> int | None:
        """Its index in a batch's ``items`` (an int key is a list index), if it is in one."""
        if len(self.loc) > 2 and self.loc[1] == "items" and isinstance(self.loc[2], int):
            return self.loc[2]
        return None


def _refusals(data: Any) -> list[_Refusal]:
    """In document order: containers nested deeper than MAX_NESTING, and what PostgreSQL's
    jsonb would not keep as sent (numbers a double changes, NUL characters, lone surrogates)."""
    refusals: list[_Refusal] = []
    pending: list[tuple[_Path, int, Any]] = [(None, 1, data)]
    while pending:
        path, level, item = pending.pop()
        if isinstance(item, (dict, list)) and level > MAX_NESTING:
            refusals.append(_Refusal(_loc(path), TOO_DEEP, too_deep=True))
        elif isinstance(item, dict):
            for key, value in reversed(item.items()):
                # A refused key is reported at its object: its own location could not be sent.
                pending.append(
                    (path, level, key) if _problem(key) else ((path, key), level + 1, value)
                )
        elif isinstance(item, list):
            # Only containers and refused members are walked on: a 8 MiB list stays cheap.
            walked = [((path, i), level + 1, v) for i, v in enumerate(item) if _walked_on(v)]
            pending += reversed(walked)
        elif problem := _problem(item):
            refusals.append(_Refusal(_loc(path), problem))
    return refusals


def _sorted_refusals(
    refusals: list[_Refusal], items_apart: bool
) -> tuple[list[dict[str, Any]], ItemErrors]:
    """(the errors that refuse the whole call, those of single batch items)."""
    whole_call: list[dict[str, Any]] = []
    item_errors: ItemErrors = {}
    for refusal in refusals:
        error = {"loc": refusal.loc, "msg": refusal.msg}
        index = refusal.item_index if items_apart and not refusal.too_deep else None
        if index is None:
            whole_call.append(error)
        else:
            item_errors.setdefault(index, []).append(error)
    return whole_call, item_errors


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


def body_hash(data: Any) -> str:
    """``request_hash`` (equal as parsed JSON, equal hash), also for a batch body whose
    invalid items hold what JSON text cannot carry: inexact numbers, lone surrogates."""
    try:
        return request_hash(data)
    except (TypeError, UnicodeEncodeError):
        return _hash_with_refused_values(data)


def _hash_with_refused_values(data: Any) -> str:
    """The canonical text with each inexact number as null, then, after a line break (which
    that text never holds), where each was and its literal: 1e400 and "1e400" differ."""
    inexact: list[tuple[list[Any], str]] = []

    def plain(item: Any, loc: list[Any]) -> Any:  # depth ≤ MAX_NESTING: parsing checked it
        if isinstance(item, _InexactNumber):
            inexact.append((loc, item.literal))
            return None
        if isinstance(item, dict):
            return {k: plain(v, [*loc, k]) for k, v in item.items()}
        if isinstance(item, list):
            return [plain(v, [*loc, i]) for i, v in enumerate(item)]
        return item

    text = json.dumps(plain(data, []), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text += "\n" + json.dumps(inexact)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
