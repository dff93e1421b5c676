"""Reading a workspace's catalog into snapshots, and importing it (SPEC 3)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Table, literal_column, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from schemas.api import InitiateOutboundRequest
from schemas.catalog import CatalogFile
from worker.model import Agent, Catalog, Channel, Contact, Template, User
from worker.store.tables import agents, brands, channels, contacts, templates, users


def load(
    conn: Connection, workspace_id: UUID, requests: Iterable[InitiateOutboundRequest]
) -> Catalog:
    """What ``requests`` can refer to; channels and agents are read whole (they are few)."""
    requests = list(requests)
    user_ids = {r.handoff_override.user_id for r in requests if r.handoff_override}
    return Catalog(
        templates={
            row.id: Template(row.id, row.name, row.language, row.category, row.status, row.body)
            for row in _rows(
                conn, templates, workspace_id, {r.template.template_id for r in requests}
            )
        },
        contacts={
            row.id: Contact(row.id, row.name, row.phone, row.opted_out)
            for row in _rows(conn, contacts, workspace_id, {r.contact_id for r in requests})
        },
        brand_ids=frozenset(
            row.id
            for row in _rows(
                conn, brands, workspace_id, {r.brand_id for r in requests if r.brand_id}
            )
        ),
        channels={
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
            for row in _rows(conn, channels, workspace_id)
        },
        agents={
            row.id: Agent(row.id, row.kind, row.active) for row in _rows(conn, agents, workspace_id)
        },
        users={
            row.id: User(row.id, row.active) for row in _rows(conn, users, workspace_id, user_ids)
        },
    )


def _rows(conn: Connection, table: Table, workspace_id: UUID, ids: set[UUID] | None = None) -> Any:
    if ids is not None and not ids:
        return []
    query = select(table).where(table.c.workspace_id == workspace_id)
    if ids is not None:
        query = query.where(table.c.id.in_(ids))
    return conn.execute(query)


class CatalogImportError(Exception):
    """The file cannot be imported; nothing was written."""


_IMPORT_ORDER: tuple[tuple[str, Table], ...] = (
    ("brands", brands),
    ("users", users),
    ("agents", agents),
    ("channels", channels),
    ("templates", templates),
    ("contacts", contacts),
)


def import_file(
    conn: Connection, workspace_id: UUID, file: CatalogFile
) -> dict[str, dict[str, int]]:
    """Upserts every row by id, all or nothing; returns inserted/updated counts per kind.

    The caller owns the transaction and rolls it back on error.
    """
    counts: dict[str, dict[str, int]] = {}
    for kind, table in _IMPORT_ORDER:
        rows = [_row(item.model_dump(by_alias=False), workspace_id) for item in getattr(file, kind)]
        counts[kind] = _upsert(conn, kind, table, rows)
    return counts


def _row(item: dict[str, Any], workspace_id: UUID) -> dict[str, Any]:
    return {**item, "workspace_id": workspace_id}


def _upsert(
    conn: Connection, kind: str, table: Table, rows: list[dict[str, Any]]
) -> dict[str, int]:
    if not rows:
        return {"inserted": 0, "updated": 0}
    new = insert(table).values(rows)
    updatable = [c.name for c in table.columns if c.name not in ("id", "workspace_id")]
    stmt = new.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={name: new.excluded[name] for name in updatable},
        # An id owned by another workspace is left alone, and so missing from RETURNING.
        where=table.c.workspace_id == new.excluded.workspace_id,
    ).returning(table.c.id, literal_column("xmax = 0").label("inserted"))
    try:
        returned = conn.execute(stmt).all()
    except IntegrityError as exc:
        raise CatalogImportError(f"{kind}: {_constraint_detail(exc)}") from None
    if len(returned) != len(rows):
        taken = {str(r["id"]) for r in rows} - {str(r.id) for r in returned}
        raise CatalogImportError(f"{kind}: id {sorted(taken)[0]} belongs to another workspace")
    inserted = sum(1 for r in returned if r.inserted)
    return {"inserted": inserted, "updated": len(returned) - inserted}


def _constraint_detail(exc: IntegrityError) -> str:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "message_detail", None) or str(exc.orig).splitlines()[0]
