"""Process wiring: settings → engine, Redis, locks, handler dependencies."""

from __future__ import annotations

import os
from functools import lru_cache

from redis import Redis

from core.settings import Settings, get_settings
from worker.handlers import Deps
from worker.locks import ChannelLocks
from worker.store import fences
from worker.store.db import get_engine

_embedded: list[object] = []


def database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    from core.embedded import start_postgres

    server, url = start_postgres(settings.data_dir / "pg")
    _embedded.append(server)
    return url


def redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    from core.embedded import start_redis

    server, url = start_redis(settings.data_dir / "redis")
    _embedded.append(server)
    return url


@lru_cache(maxsize=1)
def resolved_urls() -> tuple[str, str]:
    """(database URL, Redis URL); an unset one starts the embedded server once."""
    settings = get_settings()
    return database_url(settings), redis_url(settings)


_redis_clients: dict[int, Redis] = {}


def redis_client() -> Redis:
    pid = os.getpid()
    if pid not in _redis_clients:
        _redis_clients[pid] = Redis.from_url(resolved_urls()[1])
    return _redis_clients[pid]


def handler_deps() -> Deps:
    settings = get_settings()
    # Tasks retry on a dead connection: no ping round trip per transaction (see make_engine).
    engine = get_engine(resolved_urls()[0], pre_ping=False)
    locks = ChannelLocks(
        redis_client(),
        lambda channel_ids: fences.issue(engine, channel_ids),
        ttl_ms=settings.lock_ttl_ms,
        wait_ms=settings.lock_wait_ms,
    )
    return Deps(engine=engine, locks=locks)
