"""A Celery task that does nothing: the broker's ceiling for bench/fanout.py (SPEC 9).

The app has the service's own configuration (worker.celery_app.create_app: Redis broker from
LEADSCOUT_REDIS_URL, acks late, prefetch 1, JSON, task events, no result backend) and only
this task, on a queue of its own, so draining it costs what Celery and Redis cost per task:

    LEADSCOUT_REDIS_URL=redis://... celery -A bench.noop_tasks worker --queues bench.noop
"""

from __future__ import annotations

from worker.celery_app import create_app

QUEUE = "bench.noop"

app = create_app()
app.conf.update(include=[], task_default_queue=QUEUE)


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]  # celery ships no type hints
def noop() -> None:
    """Nothing: what is left is the broker round trip, the pool hand-off and the ack."""
