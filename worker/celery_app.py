"""The Celery app: Redis broker, no result backend (outcomes live in PostgreSQL)."""

from __future__ import annotations

from celery import Celery


def broker_url(redis_url: str) -> str:
    """kombu spells a Unix socket ``redis+socket://``."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def create_app() -> Celery:
    """The app, without a broker: entry points call ``use_broker`` before using it."""
    app = Celery("leadscout")
    app.conf.update(
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
        task_default_queue="leadscout",
        worker_hijack_root_logger=False,
        include=["worker.tasks"],
    )
    return app


app = create_app()


def use_broker(redis_url: str) -> Celery:
    app.conf.broker_url = broker_url(redis_url)
    return app
