"""Statements over many rows: writes through psycopg's COPY, inside the caller's
SQLAlchemy transaction, and id lists as one array parameter."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, islice
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.types.array import ListBinaryDumper
from psycopg.types.json import Json, Jsonb
from sqlalchemy import (
    BindParameter,
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.exc import DBAPIError


def any_of(column: Column[Any], ids: Iterable[UUID]) -> ColumnElement[bool]:
    """``column = ANY(:ids)``: one array parameter for any number of ids, where an IN list
    would bind (and make psycopg parse) one parameter per id."""
    values = bindparam(f"{column.key}_any", list(ids), _UUIDS)
    return column == any_(values)


def wanted_ids(name: str, column: str = "id") -> Any:
    """``unnest(:name) AS wanted(column)``, to look a table up once per id: join it as a
    LATERAL subquery the planner cannot flatten (``OFFSET 0``, ``DISTINCT ON``), and each
    id is one index lookup. The planner costs ``column = ANY(:ids)`` as matching the whole
    table while the column has no statistics yet (a new workspace's first campaign), and
    picks a scan of everything that grows with the campaign; a plain join of a thousand ids
    it planned as a hash of the whole table."""
    return func.unnest(id_array(name)).table_valued(column).render_derived(name="wanted")


def encoded_json(text: bytes) -> Json:
    """A json value already encoded as JSON text, for ``copy_rows`` to send as is (a json
    column keeps it verbatim)."""
    return Json(text, dumps=_as_is)


def _as_is(text: bytes) -> bytes:
    return text


def id_array(name: str) -> BindParameter[Any]:
    """An array-of-uuid parameter bound at execution, for statements built once at import:
    building a statement costs the client more than executing it."""
    return bindparam(name, type_=_UUIDS)


class _IdList(list[UUID]):
    """Ids psycopg sends as one binary ``uuid[]``: 16 bytes each, where the text array
    costs about six times as much to encode here and to parse on the server (a chunk binds
    half a dozen lists of 500)."""


psycopg.adapters.register_dumper(_IdList, ListBinaryDumper)


class _UUIDArray(TypeDecorator[list[UUID]]):
    impl = ARRAY(PgUUID(as_uuid=True))
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        # In place of ARRAY's, which would copy the ids into a plain list again.
        def process(value: Any) -> Any:
            return None if value is None else _IdList(value)

        return process


_UUIDS = _UUIDArray()


# Up to this many rows go in one INSERT: a COPY costs more to set up, on both sides, than a
# few rows cost to bind (a single initiation writes one row per table).
FEW_ROWS = 8


def copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Streams ``rows`` (values in ``columns`` order) into ``table``; returns the count.

    Binary COPY costs the client and the server a fraction of a multi-row INSERT: no SQL
    to build or parse, no parameters to bind one by one. A handful of rows is cheaper as
    one INSERT.
    """
    rows = iter(rows)
    first = list(islice(rows, FEW_ROWS + 1))
    if not first:
        return 0
    with _as_sqlalchemy_errors(table):
        if len(first) <= FEW_ROWS:
            return _insert(conn, table, columns, first)
        return _copy(conn, table, columns, chain(first, rows))


def _insert(
    conn: Connection, table: Table, columns: Sequence[str], rows: list[Sequence[Any]]
) -> int:
    """One multi-row INSERT, its values adapted by psycopg as COPY's are."""
    wrappers = [_JSON_WRAPPERS.get(type_name(conn, table.c[name])) for name in columns]
    values = [
        wrap(value) if wrap and value is not None and not isinstance(value, Json | Jsonb) else value
        for row in rows
        for value, wrap in zip(row, wrappers, strict=True)
    ]
    row = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(columns)))
    statement = sql.SQL("INSERT INTO {} ({}) VALUES {}").format(
        sql.Identifier(table.name),
        sql.SQL(", ").join(map(sql.Identifier, columns)),
        sql.SQL(", ").join([row] * len(rows)),
    )
    # Through SQLAlchemy (its events see it, its errors wrap psycopg's), values as they are.
    conn.exec_driver_sql(statement.as_string(driver(conn)), tuple(values))
    return len(rows)


# A dict or list bound to a json or jsonb column: psycopg adapts it only wrapped.
_JSON_WRAPPERS: dict[str, type[Json] | type[Jsonb]] = {"json": Json, "jsonb": Jsonb}


def _copy(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    count = 0
    with driver(conn).cursor() as cursor, cursor.copy(statement) as copy:
        # Binary COPY needs the types up front.
        copy.set_types([type_name(conn, table.c[name]) for name in columns])
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


@contextmanager
def _as_sqlalchemy_errors(table: Table) -> Iterator[None]:
    """What SQLAlchemy raises for the same failure of its own INSERT (IntegrityError,
    OperationalError...), so that callers and retries treat every write alike."""
    try:
        yield
    except psycopg.Error as error:
        raise DBAPIError.instance(f"write {table.name}", None, error, psycopg.Error) from error


def type_name(conn: Connection, column: Column[Any]) -> str:
    """The column's type as psycopg names it: ``VARCHAR(200)`` → ``varchar``."""
    return str(column.type.compile(dialect=conn.dialect)).split("(")[0].lower()


def driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's, inside the same transaction."""
    connection = conn.connection.driver_connection
    if not isinstance(connection, psycopg.Connection):
        raise TypeError("bulk writes stream with psycopg's COPY")
    return connection
