"""Configuration from the environment (SPEC 7)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ConfigurationError(Exception):
    """Bad configuration: one clear line, raised at start."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADSCOUT_", extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    sync_wait_s: float = Field(default=10.0, ge=0, le=300)
    lock_ttl_ms: int = Field(default=5000, ge=50)
    lock_wait_ms: int = Field(default=10000, ge=0)
    sweep_after_s: float = Field(default=30.0, gt=0)
    events_stream: str = Field(default="leadscout:events", min_length=1)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    log_format: Literal["json", "console"] = "json"
    data_dir: Path = Path(".leadscout")

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql", "postgres://")):
            raise ValueError("must be a postgresql:// URL")
        return url

    @field_validator("redis_url")
    @classmethod
    def _redis_only(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url


def load_settings() -> Settings:
    """Reads the environment; bad values raise ConfigurationError with one line."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LEADSCOUT_" + str(first["loc"][0]).upper() if first["loc"] else "LEADSCOUT_*"
        raise ConfigurationError(f"bad configuration: {name}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
