"""Workspaces and their API keys (stored as SHA-256 digests)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from uuid import UUID, uuid4

from redis import Redis
from sqlalchemy import Connection, delete, insert, select

from worker.store.tables import api_keys, workspaces

KEY_PREFIX = "lsk_"
# Who removes a key PUBLISHes its hash here (never the key): every API process forgets it.
REVOKED_KEYS_CHANNEL = "leadscout:keys:revoked"


class UnknownWorkspace(LookupError):
    """No workspace has this id."""


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


def rotate_key(conn: Connection, workspace_id: UUID) -> tuple[str, list[str]]:
    """Replaces every key of the workspace with a new one; returns (the new key in clear,
    the removed keys' hashes). Raises UnknownWorkspace."""
    # The row lock makes concurrent rotations take turns: the last one's key is the one left.
    locked = select(workspaces.c.id).where(workspaces.c.id == workspace_id).with_for_update()
    if conn.execute(locked).first() is None:
        raise UnknownWorkspace(str(workspace_id))
    removed = conn.execute(
        delete(api_keys)
        .where(api_keys.c.workspace_id == workspace_id)
        .returning(api_keys.c.key_hash)
    )
    old_hashes = list(removed.scalars())
    return add_key(conn, workspace_id), old_hashes


def workspace_of_key(conn: Connection, api_key: str) -> UUID | None:
    return conn.execute(
        select(api_keys.c.workspace_id).where(api_keys.c.key_hash == hash_key(api_key))
    ).scalar_one_or_none()


def announce_revoked(redis: Redis, key_hashes: Iterable[str]) -> None:
    """Tells every running API process to forget these keys now (their caches hold them)."""
    for key_hash in key_hashes:
        redis.publish(REVOKED_KEYS_CHANNEL, key_hash)
