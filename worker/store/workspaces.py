"""Workspaces and their API keys (stored as SHA-256 digests)."""

from __future__ import annotations

import hashlib
import secrets
from uuid import UUID, uuid4

from sqlalchemy import Connection, insert, select

from worker.store.tables import api_keys, workspaces

KEY_PREFIX = "lsk_"


def hash_key(api_key: str) -> str:
    # Keys are 256 random bits, so a fast unsalted digest is enough: there is
    # nothing to brute-force that a slow KDF would protect.
    return hashlib.sha256(api_key.encode()).hexdigest()


def create(conn: Connection, name: str) -> tuple[UUID, str]:
    """Creates a workspace with one API key; returns (workspace id, the key in clear)."""
    workspace_id = uuid4()
    conn.execute(insert(workspaces).values(id=workspace_id, name=name))
    return workspace_id, add_key(conn, workspace_id)


def add_key(conn: Connection, workspace_id: UUID) -> str:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    conn.execute(insert(api_keys).values(key_hash=hash_key(api_key), workspace_id=workspace_id))
    return api_key


def workspace_of_key(conn: Connection, api_key: str) -> UUID | None:
    return conn.execute(
        select(api_keys.c.workspace_id).where(api_keys.c.key_hash == hash_key(api_key))
    ).scalar_one_or_none()
