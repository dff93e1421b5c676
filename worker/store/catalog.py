"""Reading a workspace's catalog into snapshots, and importing it (SPEC 3)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, islice
from operator import attrgetter
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from pydantic.alias_generators import to_camel
from sqlalchemy import (
    Column,
    Connection,
    FromClause,
    Integer,
    MetaData,
    Table,
    bindparam,
    cast,
    column,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.exc import DBAPIError

from schemas.api import InitiateOutboundRequest
from schemas.catalog import CATALOG_KINDS, CatalogFile, CatalogRow
from worker.model import Agent, Catalog, Channel, Contact, Template, User
from worker.store import bulk
from worker.store.tables import agents, brands, channels, contacts, templates, users, workspaces

# A workspace's catalog but its contacts, kept per process: read again when an import has
# bumped ``workspaces.catalog_version`` (read with the contacts, in one statement), or after
# CACHE_TTL_S, since a hand edit in SQL bumps nothing.
CACHE_TTL_S = 60.0
CACHE_WORKSPACES = 1000


@dataclass(frozen=True, slots=True)
class _Kept:
    version: int
    read_at: float
    templates: dict[UUID, Template]
    brand_ids: frozenset[UUID]
    channels: dict[UUID, Channel]
    agents: dict[UUID, Agent]
    users: dict[UUID, User]


_kept: dict[UUID, _Kept] = {}


def load(
    conn: Connection, workspace_id: UUID, requests: Iterable[InitiateOutboundRequest]
) -> Catalog:
    """What ``requests`` can refer to: their contacts, read now, and the rest of the
    workspace's catalog (templates, brands, channels with their agents, users)."""
    rows = conn.execute(
        _CONTACTS_AND_VERSION,
        {"of_workspace": workspace_id, "ids": list({r.contact_id for r in requests})},
    ).all()
    kept = _the_rest(conn, workspace_id, rows[0].catalog_version if rows else -1)
    return Catalog(
        templates=kept.templates,
        contacts={
            row.id: Contact(row.id, row.name, row.phone, row.opted_out)
            for row in rows
            if row.workspace_id == workspace_id
        },
        brand_ids=kept.brand_ids,
        channels=kept.channels,
        agents=kept.agents,
        users=kept.users,
    )


# One row per contact found, or one row of NULLs: the version comes back either way.
# Each contact is looked up by its id alone (see bulk.wanted_ids) and kept if it is the
# workspace's: with the workspace in the join, a planner whose statistics predate an
# import scans the whole workspace for every chunk. As a plain join, a chunk of a thousand
# ids was planned as a hash of the whole table (29 µs per contact at 100,000 contacts, and
# growing with them; 5 µs as lookups).
_WANTED = bulk.wanted_ids("ids")
_CONTACT = (
    select(
        contacts.c.workspace_id,
        contacts.c.id,
        contacts.c.name,
        contacts.c.phone,
        contacts.c.opted_out,
    )
    .where(contacts.c.id == _WANTED.c.id)
    .offset(literal_column("0"))
    .lateral("contact")
)
_CONTACTS_AND_VERSION = (
    select(
        workspaces.c.catalog_version,
        _CONTACT.c.workspace_id,
        _CONTACT.c.id,
        _CONTACT.c.name,
        _CONTACT.c.phone,
        _CONTACT.c.opted_out,
    )
    .select_from(workspaces.outerjoin(_WANTED.join(_CONTACT, true()), true()))
    .where(workspaces.c.id == bindparam("of_workspace"))
)


def _the_rest(conn: Connection, workspace_id: UUID, version: int) -> _Kept:
    kept, now = _kept.get(workspace_id), time.monotonic()
    if kept and kept.version == version and now - kept.read_at < CACHE_TTL_S:
        return kept
    kept = _Kept(
        version,
        now,
        templates={
            row.id: Template(row.id, row.name, row.language, row.category, row.status, row.body)
            for row in _all(conn, templates, workspace_id)
        },
        brand_ids=frozenset(row.id for row in _all(conn, brands, workspace_id)),
        **_channels_and_agents(conn, workspace_id),
        users={row.id: User(row.id, row.active) for row in _all(conn, users, workspace_id)},
    )
    if len(_kept) >= CACHE_WORKSPACES:
        _kept.clear()
    _kept[workspace_id] = kept
    return kept


_CHANNELS_AND_AGENTS = (
    select(channels, agents.c.kind.label("agent_kind"), agents.c.active.label("agent_active"))
    .outerjoin(agents, channels.c.agent_id == agents.c.id)
    .where(channels.c.workspace_id == bindparam("of_workspace"))
)


def _channels_and_agents(conn: Connection, workspace_id: UUID) -> dict[str, Any]:
    """Every channel of the workspace with the agent it names, in one statement."""
    rows = conn.execute(_CHANNELS_AND_AGENTS, {"of_workspace": workspace_id}).all()
    return {
        "channels": {
            row.id: Channel(
                row.id,
                row.type,
                row.active,
                row.brand_id,
                row.agent_id,
                row.default_advisor_id,
                row.daily_limit,
                row.priority,
            )
            for row in rows
        },
        "agents": {
            row.agent_id: Agent(row.agent_id, row.agent_kind, row.agent_active)
            for row in rows
            if row.agent_kind is not None
        },
    }


_ALL = {
    table.name: select(table).where(table.c.workspace_id == bindparam("of_workspace"))
    for table in (templates, brands, users)
}


def _all(conn: Connection, table: Table, workspace_id: UUID) -> Any:
    return conn.execute(_ALL[table.name], {"of_workspace": workspace_id})


class CatalogImportError(Exception):
    """The file cannot be imported; nothing was written."""


Section = tuple[str, Iterable[CatalogRow]]
Counts = dict[str, dict[str, int]]
_NOTHING = {"inserted": 0, "updated": 0}
# Up to this many rows, a kind goes inline in the statements (unnest of arrays): a temporary
# table and a COPY would make a one-row import (the demo, tests' catalog rows) several times
# slower.
_INLINE_ROWS = 500

_TABLES: dict[str, Table] = {
    "brands": brands,
    "users": users,
    "agents": agents,
    "channels": channels,
    "templates": templates,
    "contacts": contacts,
}


def import_file(conn: Connection, workspace_id: UUID, file: CatalogFile) -> Counts:
    """``import_rows`` for a catalog held in memory (the demo, tests)."""
    sections = ((kind, rows) for kind in CATALOG_KINDS if (rows := getattr(file, kind)))
    return import_rows(conn, workspace_id, sections)


# A kind that wrote this many rows is analyzed before the import commits.
ANALYZE_AFTER_ROWS = 1_000


def import_rows(conn: Connection, workspace_id: UUID, sections: Iterable[Section]) -> Counts:
    """Upserts every row by id, all or nothing; returns inserted/updated counts per kind.

    ``sections`` are the file's kinds, each once, with its rows in file order. A kind's rows
    stream into a temporary staging table (binary COPY; a small kind goes inline instead),
    then each kind is checked and upserted set-based, one statement per check, references
    before the rows that point at them. Memory stays bounded whatever the row count. The
    caller owns the transaction and rolls it back on error.
    """
    stages: dict[str, _Stage] = {}
    for kind, rows in sections:
        if kind in stages:
            raise CatalogImportError(f"{kind}: appears twice in the file")
        stages[kind] = _stage(conn, kind, rows)
    counts = {
        kind: _write(conn, workspace_id, stages[kind]) if kind in stages else dict(_NOTHING)
        for kind in CATALOG_KINDS
    }
    for stage in stages.values():
        if isinstance(stage.rows, Table):
            stage.rows.drop(conn)
    for kind, written in counts.items():
        if written["inserted"] + written["updated"] >= ANALYZE_AFTER_ROWS:
            # PostgreSQL's advice after a bulk load: the planner would otherwise plan the
            # next campaign's reads on the statistics of a smaller table. It sees this
            # transaction's rows, and its statistics roll back with them.
            conn.execute(text(f"ANALYZE {_TABLES[kind].name}"))
    if set(stages) - {"contacts"}:
        # Workers keep the catalog but its contacts (``load``): this has them read it again.
        conn.execute(
            update(workspaces)
            .where(workspaces.c.id == workspace_id)
            .values(catalog_version=workspaces.c.catalog_version + 1)
        )
    return counts


@dataclass(frozen=True)
class _Stage:
    """A kind's rows with their index in the file: a temporary table, or inline arrays."""

    kind: str
    table: Table
    rows: FromClause
    count: int


def _stage(conn: Connection, kind: str, rows: Iterable[CatalogRow]) -> _Stage:
    table = _TABLES[kind]
    fields = list(CATALOG_KINDS[kind].model_fields)
    columns = [
        Column("idx", Integer, nullable=False),
        *(Column(f, table.c[f].type) for f in fields),
    ]
    rows = iter(rows)
    head = list(islice(rows, _INLINE_ROWS + 1))
    if len(head) <= _INLINE_ROWS:
        return _Stage(kind, table, _inline(kind, columns, fields, head), len(head))
    staging = Table(
        f"catalog_import_{kind}",
        MetaData(),
        *columns,
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    staging.create(conn)
    return _Stage(kind, table, staging, _copy(conn, staging, fields, chain(head, rows)))


def _inline(
    kind: str, columns: list[Column[Any]], fields: list[str], rows: list[CatalogRow]
) -> FromClause:
    """``rows`` as ``unnest(<one array per column>)``.

    One parameter per column whatever the row count, and so one statement shape, which
    SQLAlchemy compiles once.
    """
    data = [list(range(len(rows))), *([getattr(row, f) for row in rows] for f in fields)]
    arrays = [
        cast(bindparam(f"{c.name}_values", values), ARRAY(c.type))
        for c, values in zip(columns, data, strict=True)
    ]
    return (
        func.unnest(*arrays)
        .table_valued(*(column(c.name, c.type) for c in columns))
        .render_derived(name=f"catalog_import_{kind}")
    )


def _copy(conn: Connection, staging: Table, fields: list[str], rows: Iterable[CatalogRow]) -> int:
    """Streams ``rows`` into ``staging``, each with its index in the file; returns the count."""
    values = attrgetter(*fields)
    indexed = ((index, *values(row)) for index, row in enumerate(rows))
    return bulk.copy_rows(conn, staging, ["idx", *fields], indexed)


def _write(conn: Connection, workspace_id: UUID, stage: _Stage) -> dict[str, int]:
    if stage.count == 0:
        return dict(_NOTHING)
    _refuse_dangling_references(conn, workspace_id, stage)
    inserted, written = _upsert_each_id_once(conn, workspace_id, stage)
    if written != stage.count:
        _refuse_foreign_ids(conn, workspace_id, stage)
    return {"inserted": inserted, "updated": written - inserted}


def _upsert_each_id_once(conn: Connection, workspace_id: UUID, stage: _Stage) -> tuple[int, int]:
    """``_upsert``; PostgreSQL refuses an id repeated in the file, and then it is named.

    Letting the upsert find repeats spares the common case a sort of every staged id.
    """
    try:
        with conn.begin_nested():
            return _upsert(conn, workspace_id, stage)
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.errors.CardinalityViolation):
            _refuse_duplicate_ids(conn, stage)
        raise


def _refuse_duplicate_ids(conn: Connection, stage: _Stage) -> None:
    rows = stage.rows
    numbered = select(
        rows.c.idx,
        rows.c.id,
        func.row_number().over(partition_by=rows.c.id, order_by=rows.c.idx).label("nth"),
        func.min(rows.c.idx).over(partition_by=rows.c.id).label("first"),
    ).subquery()
    repeat = conn.execute(
        select(numbered.c.idx, numbered.c.id, numbered.c.first)
        .where(numbered.c.nth == 2)
        .order_by(numbered.c.idx)
        .limit(1)
    ).first()
    if repeat is not None:
        raise CatalogImportError(
            f"{stage.kind}[{repeat.idx}].id: duplicate id {repeat.id}"
            f" (first at {stage.kind}[{repeat.first}])"
        )


def _refuse_dangling_references(conn: Connection, workspace_id: UUID, stage: _Stage) -> None:
    """A reference must name a row of the workspace: imported before, or by this file."""
    for name, target in _references(stage.table):
        ref = stage.rows.c[name]
        dangling = conn.execute(
            select(stage.rows.c.idx, ref.label("ref"))
            .where(
                ref.is_not(None),
                ~exists().where(target.c.workspace_id == workspace_id, target.c.id == ref),
            )
            .order_by(stage.rows.c.idx)
            .limit(1)
        ).first()
        if dangling is not None:
            raise CatalogImportError(
                f"{stage.kind}[{dangling.idx}].{to_camel(name)}: {dangling.ref}"
                f" is not one of the workspace's {target.name}"
            )


def _references(table: Table) -> Iterable[tuple[str, Table]]:
    """(column, referenced table) of each same-workspace foreign key of ``table``."""
    for fk in table.foreign_key_constraints:
        names = [c.name for c in fk.columns]
        if len(names) == 2 and names[0] == "workspace_id":
            yield names[1], fk.referred_table


def _upsert(conn: Connection, workspace_id: UUID, stage: _Stage) -> tuple[int, int]:
    """Writes the staged rows; (inserted, written). Another workspace's ids are not written."""
    table, rows = stage.table, stage.rows
    columns = [c.name for c in rows.columns if c.name != "idx"]
    # In id order: the indexes on id take their entries in sequence, a quarter less work
    # than in file order at 10^6 rows, and concurrent imports lock shared ids in one order.
    staged = select(
        *(rows.c[name] for name in columns), literal(workspace_id, PgUUID(as_uuid=True))
    ).order_by(rows.c.id)
    new = insert(table).from_select([*columns, "workspace_id"], staged)
    written = (
        new.on_conflict_do_update(
            index_elements=[table.c.id],
            set_={name: new.excluded[name] for name in columns if name != "id"},
            where=table.c.workspace_id == new.excluded.workspace_id,
        )
        .returning(literal_column("xmax = 0").label("inserted"))
        .cte("written")
    )
    counted = select(func.count().filter(written.c.inserted), func.count()).select_from(written)
    inserted, total = conn.execute(counted).one()
    return int(inserted), int(total)


def _refuse_foreign_ids(conn: Connection, workspace_id: UUID, stage: _Stage) -> None:
    table, rows = stage.table, stage.rows
    taken = conn.execute(
        select(rows.c.idx, rows.c.id)
        .join(table, table.c.id == rows.c.id)
        .where(table.c.workspace_id != workspace_id)
        .order_by(rows.c.idx)
        .limit(1)
    ).first()
    where = f"{stage.kind}[{taken.idx}].id: {taken.id}" if taken else f"{stage.kind}: an id"
    raise CatalogImportError(f"{where} belongs to another workspace")
