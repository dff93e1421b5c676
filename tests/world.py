"""A workspace with a catalog built row by row through the real import path."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from redis import Redis
from sqlalchemy import Engine

from schemas.catalog import CatalogFile
from schemas.commands import InitiateOutbound
from worker import handlers
from worker.handlers import Deps
from worker.locks import ChannelLocks
from worker.store import catalog, commands, fences, workspaces
from worker.store.commands import Outcome

DEFAULT_BODY = "Hola {{1}}, soy {{2}} de Acme"


def make_deps(engine: Engine, redis: Redis, ttl_ms: int = 5000, wait_ms: int = 10000) -> Deps:
    locks = ChannelLocks(redis, lambda c: fences.issue(engine, c), ttl_ms=ttl_ms, wait_ms=wait_ms)
    return Deps(engine=engine, locks=locks)


class World:
    def __init__(self, engine: Engine, redis: Redis, name: str = "Acme") -> None:
        self.engine = engine
        self.redis = redis
        self.deps = make_deps(engine, redis)
        with engine.begin() as conn:
            self.workspace_id, self.api_key = workspaces.create(conn, name)

    def _import(self, kind: str, row: dict[str, Any]) -> UUID:
        row = {"id": str(uuid4()), **row}
        file = CatalogFile.model_validate({kind: [row]})
        with self.engine.begin() as conn:
            catalog.import_file(conn, self.workspace_id, file)
        return UUID(row["id"])

    def brand(self, name: str = "Acme Motors") -> UUID:
        return self._import("brands", {"name": name})

    def user(self, active: bool = True, role: str = "advisor") -> UUID:
        return self._import(
            "users", {"name": "Ana Ruiz", "email": "ana@acme.test", "role": role, "active": active}
        )

    def agent(self, kind: str = "prospection", active: bool = True) -> UUID:
        return self._import("agents", {"name": "Scout", "kind": kind, "active": active})

    def channel(self, agent_id: UUID | None, **fields: Any) -> UUID:
        row = {
            "type": "whatsapp",
            "phoneNumber": "+5215512345678",
            "brandId": None,
            "agentId": str(agent_id) if agent_id else None,
            "active": True,
            "dailyLimit": 1000,
            "priority": 0,
        }
        row.update({k: str(v) if isinstance(v, UUID) else v for k, v in fields.items()})
        return self._import("channels", row)

    def template(self, body: str = DEFAULT_BODY, status: str = "APPROVED") -> UUID:
        return self._import(
            "templates",
            {
                "name": "welcome_v2",
                "language": "es_MX",
                "category": "MARKETING",
                "status": status,
                "body": body,
                "brandId": None,
            },
        )

    def contact(self, opted_out: bool = False, phone: str = "+5215598765432") -> UUID:
        return self._import(
            "contacts", {"name": "Luis", "phone": phone, "email": None, "optedOut": opted_out}
        )

    def contacts(self, n: int, opted_out: int = 0) -> list[UUID]:
        """``n`` contacts through the real catalog import, in one transaction; the first
        ``opted_out`` of them opted out."""
        rows = [
            {
                "id": str(uuid4()),
                "name": f"Lead {i}",
                "phone": f"+52155{i:08d}",
                "email": None,
                "optedOut": i < opted_out,
            }
            for i in range(n)
        ]
        with self.engine.begin() as conn:
            catalog.import_file(
                conn, self.workspace_id, CatalogFile.model_validate({"contacts": rows})
            )
        return [UUID(row["id"]) for row in rows]

    def command(self, **body: Any) -> InitiateOutbound:
        """Records a command as the API would; ``body`` is the JSON of SPEC 4.1."""
        cmd = InitiateOutbound.model_validate(
            {"commandId": str(uuid4()), "workspaceId": str(self.workspace_id), "request": body}
        )
        with self.engine.begin() as conn:
            commands.record(conn, cmd)
        return cmd

    def initiate(self, **body: Any) -> Outcome:
        return handlers.initiate_outbound(self.command(**body), self.deps)


def body(
    contact_id: UUID, template_id: UUID, parameters: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    """A request body in SPEC 4.1's camelCase JSON."""
    data: dict[str, Any] = {
        "contactId": str(contact_id),
        "template": {
            "templateId": str(template_id),
            "parameters": ["Luis", "Ana"] if parameters is None else parameters,
        },
    }
    data.update({k: str(v) if isinstance(v, UUID) else v for k, v in extra.items()})
    return data
