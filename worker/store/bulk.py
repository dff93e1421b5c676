"""Bulk writes through psycopg's COPY, inside the caller's SQLAlchemy transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Column, Connection, Table
from sqlalchemy.exc import DBAPIError


def copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """Streams ``rows`` (values in ``columns`` order) into ``table``; returns the count.

    Binary COPY costs the client and the server a fraction of a multi-row INSERT: no SQL
    to build or parse, no parameters to bind one by one.
    """
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    count = 0
    try:
        with driver(conn).cursor() as cursor, cursor.copy(statement) as copy:
            # Binary COPY needs the types up front.
            copy.set_types([type_name(conn, table.c[name]) for name in columns])
            for row in rows:
                copy.write_row(row)
                count += 1
    except psycopg.Error as error:
        # What SQLAlchemy raises for the same failure of an INSERT (IntegrityError,
        # OperationalError...), so that callers and retries treat both alike.
        raise DBAPIError.instance(f"COPY {table.name}", None, error, psycopg.Error) from error
    return count


def type_name(conn: Connection, column: Column[Any]) -> str:
    """The column's type as psycopg names it: ``VARCHAR(200)`` → ``varchar``."""
    return str(column.type.compile(dialect=conn.dialect)).split("(")[0].lower()


def driver(conn: Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under SQLAlchemy's, inside the same transaction."""
    connection = conn.connection.driver_connection
    if not isinstance(connection, psycopg.Connection):
        raise TypeError("bulk writes stream with psycopg's COPY")
    return connection
