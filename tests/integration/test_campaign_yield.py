"""Fairness beyond the queues: a campaign chunk waits while single initiations are queued."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from redis import Redis

from worker import tasks


@pytest.fixture(autouse=True)
def single_queue(redis: Redis, monkeypatch) -> Iterator[str]:
    """A list of its own stands for the single-initiation queue: a worker process of another
    test module consumes the real one, and would choke on these fake messages."""
    key = "test:yield:single-queue"
    monkeypatch.setattr(tasks, "SINGLE_QUEUE", key)
    monkeypatch.setattr(tasks, "redis_client", lambda: redis)
    yield key
    redis.delete(key)


class TestCampaignChunksYield:
    def test_a_chunk_starts_at_once_when_no_single_initiation_waits(self):
        started = time.monotonic()

        tasks._yield_to_single_initiations()

        assert time.monotonic() - started < 1.0  # far below YIELD_MAX_S (2 s)

    def test_a_chunk_waits_until_the_single_queue_is_empty(self, redis: Redis):
        redis.lpush(tasks.SINGLE_QUEUE, "a single initiation")
        drained = threading.Timer(0.3, redis.delete, args=(tasks.SINGLE_QUEUE,))
        started = time.monotonic()
        drained.start()

        tasks._yield_to_single_initiations()

        waited = time.monotonic() - started
        drained.join()
        assert 0.3 <= waited < 1.5  # left when the queue emptied, before YIELD_MAX_S
        assert redis.llen(tasks.SINGLE_QUEUE) == 0

    def test_the_wait_is_bounded(self, redis: Redis, monkeypatch):
        monkeypatch.setattr(tasks, "YIELD_MAX_S", 0.2)
        redis.lpush(tasks.SINGLE_QUEUE, "a single initiation nobody takes")
        started = time.monotonic()

        tasks._yield_to_single_initiations()

        assert 0.2 <= time.monotonic() - started < 1.5
        assert redis.llen(tasks.SINGLE_QUEUE) == 1
