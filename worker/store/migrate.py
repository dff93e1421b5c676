"""Runs Alembic, the only path by which the schema changes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from worker.store.db import make_engine

_INI = Path(__file__).resolve().parents[2] / "migrations" / "alembic.ini"


def alembic_config() -> Config:
    return Config(str(_INI))


def upgrade(database_url: str, revision: str = "head") -> None:
    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
