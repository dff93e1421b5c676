"""The Celery app: Redis broker, no result backend (outcomes live in PostgreSQL)."""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery
from celery.signals import worker_process_init, worker_ready

from core import collector
from worker.broker import broker_url

logger = structlog.get_logger(__name__)


def create_app() -> Celery:
    """The app; entry points call ``use_broker`` with the resolved Redis before using it."""
    app = Celery("leadscout")
    app.conf.update(
        broker_url=_broker_from_environment(),
        task_ignore_result=True,
        # Ack after the handler ran, and put the message back if the worker dies
        # mid-task: the handler is idempotent, a lost command is not acceptable.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One unacked message per process: a killed worker strands at most one
        # command per process, and long batch tasks don't hoard short ones.
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 600},
        # Single initiations and campaign chunks travel on separate queues (``CAMPAIGN_QUEUE``
        # in worker.tasks), so a running campaign cannot bury another workspace's initiation.
        task_default_queue="leadscout",
        worker_hijack_root_logger=False,
        # Task events (worker's -E, and task-sent from the publisher) so that
        # `celery events` and Flower can follow queues and tasks.
        worker_send_task_events=True,
        task_send_sent_event=True,
        include=["worker.tasks"],
    )
    return app


def _broker_from_environment() -> str | None:
    """Lets ``celery -A worker.celery_app events`` (or Flower) find the broker by itself.

    Read from the raw environment, not the settings: importing this module must not fail
    on an unrelated bad setting, and an unset URL means the embedded Redis, which only an
    entry point may start.
    """
    redis_url = os.environ.get("LEADSCOUT_REDIS_URL")
    return broker_url(redis_url) if redis_url else None


app = create_app()


def use_broker(redis_url: str) -> Celery:
    app.conf.broker_url = broker_url(redis_url)
    return app


def _announce_ready(sender: Any, **_: Any) -> None:
    """One line when the worker consumes: `--quiet` hides Celery's own banner and "ready"."""
    logger.info("worker.ready", hostname=sender.hostname, queues=sorted(app.amqp.queues))


worker_ready.connect(_announce_ready)


def _pool_process_started(**_: Any) -> None:
    collector.after_start_up()


worker_process_init.connect(_pool_process_started)
