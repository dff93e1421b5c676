"""Celery tasks: thin — parse the command, call the handler."""

from __future__ import annotations

from typing import Any

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError

from schemas.commands import InitiateOutbound
from worker import handlers
from worker.celery_app import app
from worker.locks import LockWaitTimeout
from worker.runtime import handler_deps
from worker.store.commands import UnknownCommand

logger = structlog.get_logger(__name__)

# Infrastructure failures are retried, never recorded as an outcome (SPEC 4.1).
RETRYABLE = (OperationalError, RedisError, LockWaitTimeout, handlers.SelectionContention)


@app.task(
    name="leadscout.initiate_outbound",
    autoretry_for=RETRYABLE,
    retry_backoff=0.2,
    retry_backoff_max=30,
    retry_jitter=True,
    max_retries=None,
)
def initiate_outbound(command: dict[str, Any]) -> None:
    parsed = InitiateOutbound.model_validate(command)
    with structlog.contextvars.bound_contextvars(
        command_id=str(parsed.command_id), workspace_id=str(parsed.workspace_id)
    ):
        try:
            handlers.initiate_outbound(parsed, handler_deps())
        except UnknownCommand:
            logger.error("initiation.unknown_command")


def publish(command: InitiateOutbound) -> None:
    """Sends the command to the workers; its row must be committed before this."""
    initiate_outbound.delay(command.model_dump(mode="json"))
