"""Reading a catalog file (SPEC 3) as a stream of validated rows, in bounded memory.

The file is parsed event by event (ijson on yajl's C parser); only the row being read is
ever held as a Python object. Every failure is a ``CatalogImportError`` whose message names
where it happened (``contacts[12].phone: ...``) and never quotes the file's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import ijson
from pydantic import ValidationError

from schemas.catalog import CATALOG_KINDS, CatalogRow
from worker.store.catalog import CatalogImportError, Section

Event = tuple[str, Any]

_CONTAINER_STARTS = frozenset({"start_map", "start_array"})
_CONTAINER_ENDS = frozenset({"end_map", "end_array"})
_SHOWN_NAME_CHARS = 40


def read_catalog(fp: IO[bytes]) -> Iterator[Section]:
    """Each kind of the file with its rows, in file order, validated as they are read.

    A kind's rows must be consumed before the next kind is asked for.
    """
    position = _Position()
    events: Iterator[Event] = ijson.basic_parse(fp, use_float=True)
    with _json_errors(position):
        if next(events, (None, None))[0] != "start_map":
            raise CatalogImportError(f"the file must be a JSON object of {_KIND_NAMES}")
        for event, kind in events:
            if event == "end_map":
                continue  # the file's last event: ijson still checks that nothing follows
            position.at_kind(kind)
            model = _row_model(kind)
            if next(events, (None, None))[0] != "start_array":
                raise CatalogImportError(f"{position.kind}: must be a list of objects")
            yield kind, _rows(events, position, model)
            position.after_kind()


_KIND_NAMES = ", ".join(CATALOG_KINDS)


@dataclass
class _Position:
    """Where the parser is, for messages: the kind and the row being read."""

    kind: str | None = None
    index: int | None = None
    done: bool = False

    def at_kind(self, kind: str) -> None:
        self.kind, self.index, self.done = _shown(kind), None, False

    def after_kind(self) -> None:
        self.done = True

    def row(self) -> str:
        return f"{self.kind}[{self.index}]"

    def __str__(self) -> str:
        if self.kind is None:
            return "at the top level"
        if self.done:
            return f"after {self.kind}"
        return f"in {self.kind}" if self.index is None else f"in {self.row()}"


@contextmanager
def _json_errors(position: _Position) -> Iterator[None]:
    """Wraps the code that pulls events (not each event: that would cost a tenth of the read)."""
    try:
        yield
    except ijson.JSONError as exc:
        raise CatalogImportError(f"invalid JSON {position}: {_reason(exc)}") from None


def _reason(exc: ijson.JSONError) -> str:
    """yajl's message without the excerpt of the file it appends."""
    reason = exc.args[0] if exc.args else "unreadable"
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    return str(reason).splitlines()[0].strip().rstrip(".")


def _row_model(kind: str) -> type[CatalogRow]:
    try:
        return CATALOG_KINDS[kind]
    except KeyError:
        raise CatalogImportError(
            f"unknown kind {_shown(kind)!r} (the kinds are {_KIND_NAMES})"
        ) from None


def _rows(
    events: Iterator[Event], position: _Position, model: type[CatalogRow]
) -> Iterator[CatalogRow]:
    with _json_errors(position):
        for index, (event, _) in enumerate(events):
            if event == "end_array":
                return
            position.index = index
            if event != "start_map":
                raise CatalogImportError(f"{position.row()}: must be an object")
            yield _validated(model, _fields(events), position)


def _fields(events: Iterator[Event]) -> dict[str, Any]:
    """One row object's members; the events up to its ``end_map`` are consumed."""
    fields: dict[str, Any] = {}
    key = ""
    for event, value in events:
        if event == "map_key":
            key = value
        elif event == "end_map":
            return fields
        elif event in _CONTAINER_STARTS:
            # No row field takes an object or a list: an empty one stands in, for the row
            # model to refuse with the field's expected type.
            fields[key] = _skipped(events, event)
        else:
            fields[key] = value
    return fields


def _skipped(events: Iterator[Event], start: str) -> dict[str, Any] | list[Any]:
    depth = 1
    for event, _ in events:
        if event in _CONTAINER_STARTS:
            depth += 1
        elif event in _CONTAINER_ENDS:
            depth -= 1
            if depth == 0:
                break
    return {} if start == "start_map" else []


def _validated(model: type[CatalogRow], fields: dict[str, Any], position: _Position) -> CatalogRow:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        path = "".join(f".{_shown(str(part))}" for part in error["loc"])
        raise CatalogImportError(f"{position.row()}{path}: {error['msg']}") from None


def _shown(name: str) -> str:
    """A member name from the file, cut short: a message names, it does not quote."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return name
    return name[: _SHOWN_NAME_CHARS - 1] + "…"
